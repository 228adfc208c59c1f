"""Import a Triton Inference Server model config (``config.pbtxt``) as a capsim scenario.

Two parts: a small reader for the protobuf *text* format Triton configs are written in (no
protobuf dependency), and :func:`from_triton`, which maps the fields that decide capacity
(max batch size, dynamic batcher, queue policies, priority levels, instance groups) onto
scenario data, validates it with :func:`capsim.config.parse_scenario`, and lists every field it
could not carry over as a warning naming the field path.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capsim.errors import CapsimError, ScenarioError


class TritonError(CapsimError):
    """A problem in a Triton config or its mapping: one line naming the file, line and field."""


# --------------------------------------------------------------------------- text format reader


class Enum(str):
    """A bare word value (an enum name such as KIND_GPU), as opposed to a quoted string."""


@dataclass
class Field:
    """One ``name: value`` occurrence; a repeated field is several Fields with the same name."""

    name: str
    value: Any  # int, float, bool, str, Enum or Message
    line: int


@dataclass
class Message:
    """A ``{ ... }`` block (or the whole file): its fields in file order, and which were read."""

    fields: list[Field] = field(default_factory=list)
    line: int = 1
    used: set[int] = field(default_factory=set)

    def all(self, name: str) -> list[Field]:
        """Every occurrence of ``name`` (marked as read)."""
        out = []
        for i, f in enumerate(self.fields):
            if f.name == name:
                self.used.add(i)
                out.append(f)
        return out

    def one(self, name: str, where: str, src: str) -> Field | None:
        """The single occurrence of ``name``, or None; given twice is an error (as in Triton)."""
        found = self.all(name)
        if len(found) > 1:
            raise TritonError(f"{src}: line {found[1].line}: {where}{name}: given {len(found)} times "
                              f"(first at line {found[0].line}); give it once")
        return found[0] if found else None

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<num>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?)(?![A-Za-z_0-9]))
  | (?P<word>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<str>"|')
  | (?P<punct>[{}\[\]<>:,;])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


@dataclass
class _Tok:
    kind: str  # num, word, str, punct, eof
    text: str
    line: int
    value: Any = None


def _tokens(text: str, src: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise TritonError(f"{src}: line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind == "newline":
            line += 1
        elif kind == "str":
            value, pos = _string(text, m.end(), m.group(), line, src)
            out.append(_Tok("str", text[m.start():pos], line, value))
            continue
        elif kind in ("num", "word", "punct"):
            out.append(_Tok(kind, m.group(), line))
        pos = m.end()
    out.append(_Tok("eof", "end of file", line))
    return out


def _string(text: str, pos: int, quote: str, line: int, src: str) -> tuple[str, int]:
    """Read a quoted string body starting after its opening quote; returns (value, end position)."""
    chars = []
    while True:
        if pos >= len(text) or text[pos] == "\n":
            raise TritonError(f"{src}: line {line}: string is not closed; add the closing {quote}")
        c = text[pos]
        if c == quote:
            return "".join(chars), pos + 1
        if c == "\\":
            nxt = text[pos + 1:pos + 2]
            if nxt in _ESCAPES:
                chars.append(_ESCAPES[nxt])
                pos += 2
                continue
            m = re.match(r"[0-7]{1,3}|[xX][0-9a-fA-F]{1,2}", text[pos + 1:])
            if m is None:
                raise TritonError(f"{src}: line {line}: unknown escape \\{nxt} in a string")
            digits = m.group()
            chars.append(chr(int(digits[1:], 16) if digits[0] in "xX" else int(digits, 8)))
            pos += 1 + len(digits)
            continue
        chars.append(c)
        pos += 1


class _Reader:
    """Recursive-descent reader over the tokens of one file."""

    def __init__(self, text: str, src: str):
        self.toks = _tokens(text, src)
        self.i = 0
        self.src = src

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, problem: str):
        raise TritonError(f"{self.src}: line {tok.line}: {problem}")

    def message(self, close: str | None, opener: _Tok | None = None, name: str = "") -> Message:
        msg = Message(line=opener.line if opener else 1)
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                if close:
                    self.fail(opener, f"{name}: the '{opener.text}' opened here is never closed (the file ends "
                                      f"first); add '{close}'")
                return msg
            if tok.kind == "punct" and tok.text == close:
                self.take()
                return msg
            if tok.kind != "word" or tok.text.startswith("-"):
                what = "'" + tok.text + "'" if tok.kind == "punct" else tok.text
                self.fail(tok, f"expected a field name, got {what}"
                               + (f" (no '{{' open for this '{tok.text}')" if tok.text in "}>]" else ""))
            self.field(msg, self.take())
            sep = self.peek()
            if sep.kind == "punct" and sep.text in ",;":
                self.take()

    def field(self, msg: Message, name: _Tok) -> None:
        colon = False
        if self.peek().kind == "punct" and self.peek().text == ":":
            self.take()
            colon = True
        tok = self.peek()
        if tok.kind == "punct" and tok.text in "{<":
            self.take()
            msg.fields.append(Field(name.text, self.message("}" if tok.text == "{" else ">", tok, name.text),
                                    name.line))
        elif tok.kind == "punct" and tok.text == "[":
            self.take()
            self.list(msg, name, tok)
        elif not colon:
            self.fail(tok, f"{name.text}: expected ':' or '{{' after the field name, got {tok.text}")
        else:
            msg.fields.append(Field(name.text, self.scalar(name.text), name.line))

    def list(self, msg: Message, name: _Tok, opener: _Tok) -> None:
        """``name: [a, b]`` or ``name [{...}, {...}]``: each element is one occurrence of the field."""
        if self.peek().kind == "punct" and self.peek().text == "]":
            self.take()
            return
        while True:
            tok = self.peek()
            if tok.kind == "punct" and tok.text in "{<":
                self.take()
                value = self.message("}" if tok.text == "{" else ">", tok, name.text)
            else:
                value = self.scalar(name.text)
            msg.fields.append(Field(name.text, value, tok.line))
            tok = self.take()
            if tok.kind == "punct" and tok.text == "]":
                return
            if not (tok.kind == "punct" and tok.text == ","):
                where = f"the '[' opened at line {opener.line}"
                self.fail(tok, f"{name.text}: expected ',' or ']' in {where}, got {tok.text}")

    def scalar(self, name: str) -> Any:
        tok = self.take()
        if tok.kind == "str":
            parts = [tok.value]
            while self.peek().kind == "str":  # "a" "b" is "ab", as in C
                parts.append(self.take().value)
            return "".join(parts)
        if tok.kind == "num":
            t = tok.text.rstrip("fF") if not tok.text.lower().startswith(("0x", "-0x")) else tok.text
            try:
                if re.fullmatch(r"-?\d+", t) or t.lower().lstrip("-").startswith("0x"):
                    return int(t, 0) if not re.fullmatch(r"-?0\d+", t) else int(t, 8)
                return float(t)
            except ValueError:
                self.fail(tok, f"{name}: {tok.text} is not a number")
        if tok.kind == "word":
            low = tok.text.lower()
            if low in ("true", "t"):
                return True
            if low in ("false", "f"):
                return False
            if low.lstrip("-") in ("inf", "infinity", "nan"):
                return float(low)
            return Enum(tok.text)
        self.fail(tok, f"{name}: expected a value after ':', got {tok.text}")


def parse_pbtxt(text: str, src: str = "config.pbtxt") -> Message:
    """Read protobuf text format into a :class:`Message` tree; a syntax error raises
    :class:`TritonError` naming the line."""
    return _Reader(text, src).message(None)


# --------------------------------------------------------------------------- mapping

# Top-level fields read by the mapping.
_MAPPED = ("name", "platform", "backend", "max_batch_size", "dynamic_batching", "instance_group")
# Fields with no effect on steady-state capacity: listed once, as ignored.
_IGNORED = ("input", "output", "version_policy", "model_warmup", "default_model_filename", "cc_model_filenames",
            "metric_tags", "model_repository_agents", "runtime", "label_filename")
# Why some known fields are not modelled (others get a generic line).
_WHY = {
    "optimization": "not modelled; it changes service times, so calibrate the profile with the same setting",
    "parameters": "not modelled (backend parameter); if it changes service times, calibrate with it",
    "sequence_batching": "not modelled: capsim simulates the dynamic batcher, not the stateful sequence batcher",
    "ensemble_scheduling": "not modelled: an ensemble chains several models; simulate the slowest step's "
                           "config, or sum the steps' times in service.batch_latency_ms",
    "response_cache": "not modelled: cache hits would skip the model; capsim computes every request",
    "model_transaction_policy": "not modelled (decoupled responses)",
    "batch_input": "not modelled (ragged batching)",
    "batch_output": "not modelled (ragged batching)",
    "rate_limiter": "not modelled: capsim does not throttle instances by resources",
}
_KINDS = {0: "KIND_AUTO", 1: "KIND_GPU", 2: "KIND_CPU", 3: "KIND_MODEL"}
_ACTIONS = {0: "REJECT", 1: "DELAY"}


@dataclass
class TritonImport:
    """The result of an import: validated scenario data, and what the user must know about it."""

    data: dict  # plain scenario data; without `service` when no profile was given
    warnings: list[str]  # "field: problem" lines
    notes: list[str]
    source: str
    has_service: bool

    def to_yaml(self) -> str:
        """The scenario file, with the warnings repeated as comments at its top."""
        head = [f"# capsim scenario imported from the Triton config {self.source} (capsim scenario from-triton)."]
        if not self.has_service:
            head.append("# NOT READY TO SIMULATE: add service.profile (capsim calibrate) or service.batch_latency_ms "
                        "first.")
        head += [f"# note: {n}" for n in self.notes]
        head += [f"# warning: {w}" for w in self.warnings]
        body = yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None, width=1000)
        return "\n".join(head) + "\n" + body


class _Mapper:
    """Maps one parsed config onto scenario data; collects warnings."""

    def __init__(self, root: Message, src: str):
        self.root, self.src = root, src
        self.warnings: list[str] = []

    def fail(self, line: int, problem: str):
        raise TritonError(f"{self.src}: line {line}: {problem}")

    def warn(self, path: str, problem: str) -> None:
        self.warnings.append(f"{path}: {problem}")

    # typed reads ---------------------------------------------------------------------------------

    def int(self, msg: Message, name: str, where: str, default: int = 0, ge: int = 0) -> tuple[int, int]:
        """(value, line) of a whole-number field."""
        f = msg.one(name, where, self.src)
        if f is None:
            return default, msg.line
        v = f.value
        if isinstance(v, float) and v.is_integer() or isinstance(v, str) and re.fullmatch(r"-?\d+", v):
            v = int(v)  # Triton accepts "8" for 64-bit integers (JSON mapping); be as lenient
        if not isinstance(v, int) or isinstance(v, bool):
            self.fail(f.line, f"{where}{name}: must be a whole number, got {_show(f.value)}")
        if v < ge:
            self.fail(f.line, f"{where}{name}: must be >= {ge}, got {v}")
        return v, f.line

    def bool(self, msg: Message, name: str, where: str) -> bool:
        f = msg.one(name, where, self.src)
        if f is None:
            return False
        if not isinstance(f.value, bool):
            self.fail(f.line, f"{where}{name}: must be true or false, got {_show(f.value)}")
        return f.value

    def enum(self, msg: Message, name: str, where: str, names: dict[int, str]) -> str | None:
        f = msg.one(name, where, self.src)
        if f is None:
            return None
        v = f.value
        if isinstance(v, int) and not isinstance(v, bool) and v in names:
            return names[v]
        if isinstance(v, Enum) and v in names.values():
            return str(v)
        self.fail(f.line, f"{where}{name}: must be one of {', '.join(names.values())}, got {_show(v)}")

    def text(self, msg: Message, name: str) -> str | None:
        f = msg.one(name, "", self.src)
        if f is None:
            return None
        if not isinstance(f.value, str) or isinstance(f.value, Enum):
            self.fail(f.line, f"{name}: must be a quoted string, got {_show(f.value)}")
        return f.value

    def messages(self, msg: Message, name: str, where: str) -> list[Field]:
        found = msg.all(name)
        for f in found:
            if not isinstance(f.value, Message):
                self.fail(f.line, f"{where}{name}: must be a block {{ ... }}, got {_show(f.value)}")
        return found

    def block(self, msg: Message, name: str, where: str) -> Message | None:
        f = msg.one(name, where, self.src)
        if f is not None and not isinstance(f.value, Message):
            self.fail(f.line, f"{where}{name}: must be a block {{ ... }}, got {_show(f.value)}")
        return f.value if f else None

    # sections ------------------------------------------------------------------------------------

    def batching(self, data: dict) -> Message | None:
        mbs, mbs_line = self.int(self.root, "max_batch_size", "")
        dyn = self.block(self.root, "dynamic_batching", "")
        b = {"mode": "triton", "max_batch_size": max(mbs, 1), "max_queue_delay_ms": 0}
        if mbs == 0:
            self.warn("max_batch_size", "0: Triton does not batch this model; capsim uses max_batch_size 1 "
                                        "(one request per execution)")
        elif dyn is None:
            b["max_batch_size"] = 1
            self.warn("dynamic_batching", f"absent: Triton runs each request as it arrives and never combines "
                                          f"requests (max_batch_size {mbs} only bounds the batch one client "
                                          f"request carries); capsim uses max_batch_size 1, max_queue_delay_ms 0. "
                                          f"Add dynamic_batching {{ }} to batch across requests")
        if dyn is not None:
            where = "dynamic_batching."
            prefs = []
            for f in dyn.all("preferred_batch_size"):
                if not isinstance(f.value, int) or isinstance(f.value, bool) or f.value < 1:
                    self.fail(f.line, f"{where}preferred_batch_size: must be whole numbers >= 1, got "
                                      f"{_show(f.value)}")
                if f.value > max(mbs, 1):
                    self.fail(f.line, f"{where}preferred_batch_size: {f.value} is above max_batch_size {mbs}; "
                                      f"Triton refuses this config too")
                if f.value not in prefs:
                    prefs.append(f.value)
            if prefs:
                b["preferred_batch_sizes"] = prefs
            us, _ = self.int(dyn, "max_queue_delay_microseconds", where)
            b["max_queue_delay_ms"] = _whole(us / 1000)
            if self.bool(dyn, "preserve_ordering", where):
                self.warn(f"{where}preserve_ordering", "not modelled: capsim returns each response when its "
                                                      "batch completes (with several instances a response may "
                                                      "wait for an earlier one in Triton)")
        data["batching"] = b
        return dyn

    def policy(self, pol: Message | None, where: str) -> dict:
        """A Triton ModelQueuePolicy as capsim {max_size, timeout_ms, on_full}."""
        out = {"max_size": 0, "timeout_ms": 0, "on_full": "reject"}
        if pol is None:
            return out
        out["max_size"], _ = self.int(pol, "max_queue_size", where)
        us, _ = self.int(pol, "default_timeout_microseconds", where)
        action = self.enum(pol, "timeout_action", where, _ACTIONS) or "REJECT"
        if action == "DELAY" and us > 0:
            self.warn(f"{where}timeout_action", f"DELAY is not modelled (Triton keeps a timed-out request and "
                                                f"serves it after the others); capsim does not time these "
                                                f"requests out (timeout_ms 0 instead of {us / 1000:g})")
        else:
            out["timeout_ms"] = _whole(us / 1000)
        if self.bool(pol, "allow_timeout_override", where):
            self.warn(f"{where}allow_timeout_override", "per-request timeouts are not modelled; every request "
                                                        f"gets timeout_ms {out['timeout_ms']:g}")
        return out

    def queue(self, data: dict, dyn: Message | None) -> None:
        if dyn is None:
            return
        where = "dynamic_batching."
        default = self.block(dyn, "default_queue_policy", where)
        levels, lv_line = self.int(dyn, "priority_levels", where)
        default_level, dl_line = self.int(dyn, "default_priority_level", where)
        default_policy = self.policy(default, f"{where}default_queue_policy.")
        per_level: dict[int, tuple[Message, int]] = {}
        for f in self.messages(dyn, "priority_queue_policy", where):
            key, kline = self.int(f.value, "key", f"{where}priority_queue_policy.")
            if not 1 <= key <= max(levels, 0):
                self.fail(kline, f"{where}priority_queue_policy: key {key} is not a priority level "
                                 f"(priority_levels is {levels}, so 1..{levels})")
            if key in per_level:
                self.fail(f.line, f"{where}priority_queue_policy: level {key} given twice "
                                  f"(first at line {per_level[key][1]})")
            per_level[key] = (self.block(f.value, "value", f"{where}priority_queue_policy.") or Message(), f.line)
        if levels and not 1 <= default_level <= levels:
            self.fail(dl_line, f"{where}default_priority_level: must be a level 1..{levels} when priority_levels "
                               f"is set, got {default_level}")
        if levels <= 1:
            q = self.policy(per_level[1][0], f"{where}priority_queue_policy[1].") if per_level else default_policy
            q = {k: v for k, v in q.items() if v not in (0, "reject")}
            if q:
                data["queue"] = q
            return
        out = []
        for lv in range(1, levels + 1):
            if lv in per_level:
                pol = self.policy(per_level[lv][0], f"{where}priority_queue_policy[{lv}].")
            else:
                pol = default_policy
            out.append({"share": 1 / levels, **pol})
        data["priority"] = {"levels": out}
        self.warn("priority.levels[].share", f"a Triton config holds no traffic mix; each of the {levels} levels "
                                             f"gets share 1/{levels}. Set priority.levels[].share to your traffic "
                                             f"(capsim level k = Triton level k+1; requests without a priority go "
                                             f"to Triton level {default_level} = capsim level "
                                             f"{default_level - 1})")

    def instances(self, data: dict) -> None:
        groups = []  # (index, kind, count, gpus or None, line)
        found = self.messages(self.root, "instance_group", "")
        for i, f in enumerate(found):
            where = f"instance_group[{i}]." if len(found) > 1 else "instance_group."
            g = f.value
            count, _ = self.int(g, "count", where, default=1, ge=1)
            kind = self.enum(g, "kind", where, _KINDS) or "KIND_AUTO"
            gpus = None
            if g.has("gpus"):
                gpus = []
                for gf in g.all("gpus"):
                    if not isinstance(gf.value, int) or isinstance(gf.value, bool) or gf.value < 0:
                        self.fail(gf.line, f"{where}gpus: must be GPU ids (whole numbers >= 0), got "
                                           f"{_show(gf.value)}")
                    gpus.append(gf.value)
                if kind != "KIND_GPU":
                    self.fail(f.line, f"{where}gpus: only used with kind KIND_GPU, got {kind}")
            g.all("name")  # a label; no effect
            if self.bool(g, "passive", where):
                self.warn(f"{where}passive", "passive instances receive no requests from Triton's scheduler; "
                                             "left out")
                continue
            groups.append((i, kind, count, gpus, f.line))
        if not found:
            data["instances"] = 1
            self.warn("instance_group", "absent: Triton then puts one instance on every visible GPU; capsim uses "
                                        "1 instance on one device. Set devices: {count: GPUs} for more")
            return
        if not groups:
            self.fail(found[0].line, "instance_group: every group is passive, so no instance serves requests")
        if any(k == "KIND_GPU" for _, k, _, _, _ in groups) and any(k != "KIND_GPU" for _, k, _, _, _ in groups):
            left = [f"instance_group[{i}] ({k})" for i, k, _, _, _ in groups if k != "KIND_GPU"]
            self.warn("instance_group", f"{', '.join(left)} left out: capsim models one service curve (the GPU "
                                        f"one); instances of another kind run at another speed")
            groups = [g for g in groups if g[1] == "KIND_GPU"]
        kind = groups[0][1]
        total = sum(c for _, _, c, _, _ in groups)
        if len(groups) > 1:
            self.warn("instance_group", f"{len(groups)} {kind} groups summed")
        listed = [g for g in groups if g[3] is not None]
        if kind != "KIND_GPU" or not listed:
            data["instances"] = total
            if kind == "KIND_GPU":
                self.warn("instance_group", f"KIND_GPU without gpus: Triton puts count instances on EVERY "
                                            f"visible GPU; capsim uses {total} instance(s) on one GPU. For several "
                                            f"GPUs set devices: {{count: GPUs, instances_per_device: {total}}}")
            return
        ids = sorted({gid for g in listed for gid in g[3]})
        per_gpu = {gid: 0 for gid in ids}
        for _, _, count, gpus, _ in groups:
            for gid in (gpus if gpus is not None else ids):
                per_gpu[gid] += count
        if len(listed) < len(groups):
            self.warn("instance_group", f"a KIND_GPU group without gpus runs on every visible GPU; capsim takes "
                                        f"the visible GPUs to be the listed ones ({', '.join(map(str, ids))})")
        if len(set(per_gpu.values())) > 1:
            spread = ", ".join(f"GPU {gid}: {n}" for gid, n in per_gpu.items())
            self.fail(groups[0][4], f"instance_group: GPUs hold different instance counts ({spread}); capsim's "
                                    f"devices need the same count on every GPU")
        k = next(iter(per_gpu.values()))
        if len(ids) == 1:
            data["instances"] = k  # one device: the plain instances field means exactly this
        else:
            data["devices"] = {"count": len(ids), "instances_per_device": k}

    def leftovers(self) -> None:
        """Warn about every field the mapping did not read, by field path."""
        ignored = []
        for name, path, value in _unread(self.root, ""):
            top = name.split(".")[0].split("[")[0]
            if top in _IGNORED:
                if top not in ignored:
                    ignored.append(top)
                continue
            leaf = path.split(".")[-1].split("[")[0]
            why = _WHY.get(leaf) or _WHY.get(top) or "not modelled (ignored)"
            self.warn(path, f"set to {_show(value)}: {why}" if not isinstance(value, Message) else why)
        if ignored:
            self.warnings.append(f"{', '.join(ignored)}: ignored (no effect on capacity)")


def _unread(msg: Message, prefix: str):
    """(top-level path, path, value) of every leaf not read; a read block is searched inside."""
    counts: dict[str, int] = {}
    for f in msg.fields:
        counts[f.name] = counts.get(f.name, 0) + 1
    seen: dict[str, int] = {}
    for i, f in enumerate(msg.fields):
        k = seen.get(f.name, 0)
        seen[f.name] = k + 1
        path = f"{prefix}{f.name}" + (f"[{k}]" if counts[f.name] > 1 and isinstance(f.value, Message) else "")
        if isinstance(f.value, Message):
            if f.value.fields:
                yield from _unread(f.value, path + ".")  # an unread block has no read fields inside
            elif i not in msg.used:
                yield path, path, f.value
        elif i not in msg.used:
            yield path, path, f.value


def _whole(v: float) -> float | int:
    """Whole numbers written as 2, not 2.0."""
    return int(v) if float(v).is_integer() else v


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, Message):
        return "a block { ... }"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _profile_path(profile: str, out_dir: Path) -> str:
    """The profile path to write so that it loads from the scenario's folder: as given when it
    already does (or is a shipped calibration/ profile), else relative to the scenario's folder."""
    from capsim.scenarios import project_dir

    p = Path(profile)
    if p.is_absolute() or not p.exists():
        return profile  # a missing file is reported by the validation
    for base in (out_dir, project_dir()):
        cand = base / p
        if cand.exists() and cand.resolve() == p.resolve():
            return profile
    return os.path.relpath(p.resolve(), out_dir.resolve())


def from_triton_text(text: str, source: str = "config.pbtxt", *, profile: str | None = None,
                     rate_rps: float = 100.0, out_dir: str | Path = ".", default_name: str = "triton-model"
                     ) -> TritonImport:
    """Map a Triton config's text onto validated scenario data (see the module docstring)."""
    if not rate_rps > 0:
        raise TritonError(f"--rate: must be > 0 rps, got {rate_rps:g}")
    root = parse_pbtxt(text, source)
    m = _Mapper(root, source)
    out_dir = Path(out_dir)
    name = m.text(root, "name") or default_name
    platform = m.text(root, "platform")
    backend = m.text(root, "backend")
    runs = ", ".join(x for x in (f"platform {platform}" if platform else "", f"backend {backend}" if backend else "")
                     if x) or "platform not given"
    data: dict = {"name": name,
                  "description": f"Imported from the Triton config {source}: model {name}, {runs}.",
                  "arrivals": {"process": "poisson", "rate_rps": _whole(rate_rps)}}
    if profile is not None:
        data["service"] = {"profile": _profile_path(profile, out_dir), "allow_mismatch": False}
    dyn = m.batching(data)
    m.queue(data, dyn)
    m.instances(data)
    m.leftovers()
    # Field order as in `capsim scenarios show`.
    order = ("name", "description", "arrivals", "service", "batching", "instances", "queue", "priority", "devices")
    data = {k: data[k] for k in order if k in data}
    notes = [f"arrivals: a Triton config holds no traffic; Poisson arrivals at {rate_rps:g} rps (--rate) stand in "
             f"for it: set arrivals to your traffic"]
    check = copy.deepcopy(data)
    if profile is None:
        # Validate everything else against a stand-in curve; the file is written without it.
        mbs = data["batching"]["max_batch_size"]
        check["service"] = {"batch_latency_ms": {1: 1.0, mbs: 1.0}}
        m.warnings.append("service: no --profile, so the scenario has no service times; add service.profile "
                          "(capsim calibrate) or service.batch_latency_ms before capsim simulate")
    try:
        from capsim.config import parse_scenario

        parse_scenario(check, base_dir=out_dir)
    except ScenarioError as exc:
        raise TritonError(f"{source}: the imported scenario is invalid: {'; '.join(exc.problems)}") from None
    return TritonImport(data, m.warnings, notes, source, profile is not None)


def from_triton(path: str | Path, *, profile: str | None = None, rate_rps: float = 100.0,
                out: str | Path | None = None) -> TritonImport:
    """Import ``config.pbtxt`` (or a model folder holding one) for a scenario written to ``out``
    (its folder anchors the relative profile path; the current folder when None)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.pbtxt"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TritonError(f"{p}: file not found; give a Triton config.pbtxt or its model folder") from None
    except UnicodeDecodeError:
        raise TritonError(f"{p}: not UTF-8 text; a config.pbtxt is protobuf text format") from None
    except OSError as exc:
        raise TritonError(f"{p}: cannot read: {exc.strerror}") from None
    out_dir = Path(out).parent if out is not None else Path(".")
    default = p.resolve().parent.name or "triton-model"  # Triton names a model after its folder
    return from_triton_text(text, str(path), profile=profile, rate_rps=rate_rps, out_dir=out_dir,
                            default_name=default)
