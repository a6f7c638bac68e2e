"""Reading a compiled program's optimized HLO text: its kernels, collectives and their bytes.

The text is ``compiled.as_text()``: computations, each a header line ``%name (...) -> ... {``
(``ENTRY`` before the entry computation's), one instruction a line
(``[ROOT] %name = type opcode(operands), attributes``), and ``}``.
"""

import dataclasses
import re
from typing import Dict, Iterator, List, Optional, Tuple

# Instructions that launch no work of their own: values, views and bookkeeping.
NOT_KERNELS = frozenset(
    {
        "parameter",
        "constant",
        "tuple",
        "get-tuple-element",
        "bitcast",
        "opt-barrier",
        "after-all",
        "add-dependency",
        "partition-id",
        "replica-id",
        "domain",
    }
)
# Instructions whose called computations run as part of them (control flow, plain calls):
# their kernels are those of the computations they call.
CALLERS = frozenset({"call", "conditional", "while", "async-start"})
CONTROL_FLOW = frozenset({"conditional", "while"})  # also counted themselves: a launch decision
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "ragged-all-to-all",
    "collective-broadcast",
)
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4}
_BYTES.update({"u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16})
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One HLO instruction: its name, result type, opcode, operand names and attribute text."""

    name: str
    type: str
    opcode: str
    operands: Tuple[str, ...]
    attributes: str

    def called(self) -> List[str]:
        """The names of the computations this instruction calls (fused, applied or branched to)."""
        names = _CALLED.findall(self.attributes)
        for group in _BRANCHES.findall(self.attributes):
            names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
        return names


def _matching(text: str, start: int) -> int:
    """The index just past the bracket that closes the one at ``text[start]``."""
    pairs, depth = {"(": ")", "{": "}", "[": "]"}, []
    for i in range(start, len(text)):
        if text[i] in pairs:
            depth.append(pairs[text[i]])
        elif depth and text[i] == depth[-1]:
            depth.pop()
            if not depth:
                return i + 1
    return len(text)


def _parse_instruction(line: str) -> Optional[Instruction]:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    name, rest = match.groups()
    end = _matching(rest, 0) if rest.startswith("(") else rest.index(" ")
    type_text, rest = rest[:end], rest[end:].lstrip()
    opcode_end = rest.index("(")
    opcode, close = rest[:opcode_end], _matching(rest, opcode_end)
    operand_text = rest[opcode_end + 1 : close - 1]
    operands = tuple(re.findall(r"%([\w.\-]+)", operand_text))
    return Instruction(name, type_text, opcode, operands, rest[close:])


def parse(hlo_text: str) -> Tuple[str, Dict[str, List[Instruction]]]:
    """Splits HLO text into computations.

    Args:
      hlo_text: a module's text, e.g. ``compiled.as_text()``.

    Returns:
      ``(entry, computations)``: the entry computation's name, and each
      computation's instructions in order.
    """
    computations: Dict[str, List[Instruction]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            instruction = _parse_instruction(line)
            if instruction is not None:
                current.append(instruction)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return entry, computations


def array_bytes(type_text: str) -> int:
    """The bytes of every array in an HLO type (a tuple's elements summed); tokens are 0."""
    total = 0
    for dtype, dims in _ARRAY.findall(type_text):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        bits = re.fullmatch(r"[su](\d+)|f\d+e\d+m\d+\w*", dtype)  # s4, u2, float8 formats
        width = _BYTES.get(dtype)
        if width is None and bits:
            width = int(bits.group(1)) / 8 if bits.group(1) else 1
        total += int(size * (width or 0))
    return total


def _walk(computations, name: str) -> Iterator[Instruction]:
    """The instructions that run at the top level of ``name``, through calls and control flow.

    A fusion is one kernel: its fused computation is not entered. ``async-start``'s wrapped
    computation is entered (the work it launches); ``*-update`` and ``*-done`` are not work.
    """
    for instruction in computations[name]:
        if instruction.opcode.endswith(("-done", "-update")) or instruction.opcode in NOT_KERNELS:
            continue
        if instruction.opcode in CALLERS:
            if instruction.opcode in CONTROL_FLOW:
                yield instruction
            for called in instruction.called():
                yield from _walk(computations, called)
        else:
            yield instruction


def kernels(hlo_text: str) -> Dict[str, int]:
    """The operations that launch work in a compiled program, counted by opcode.

    Counted: fusions, custom calls (cuDNN convolutions, cuBLAS GEMMs), unfused
    operations (a reduce, copy or convolution XLA left on its own), collectives,
    and asynchronous operations once per ``*-start``/``*-done`` pair (TPU's
    ``copy-start``, for one, a DMA into faster memory). A conditional or a
    while loop counts once for itself plus the kernels of its branches, body
    and condition (a static count: every branch, one iteration). Not counted:
    parameters, constants, tuples, ``get-tuple-element``, bitcasts,
    optimization barriers and other bookkeeping (``NOT_KERNELS``).

    Args:
      hlo_text: the optimized HLO, ``compiled.as_text()``.

    Returns:
      opcode -> count; ``sum(...values())`` is the number of kernels.
    """
    entry, computations = parse(hlo_text)
    counts: Dict[str, int] = {}
    for instruction in _walk(computations, entry):
        counts[instruction.opcode] = counts.get(instruction.opcode, 0) + 1
    return counts


def _types(computations) -> Dict[str, str]:
    return {i.name: i.type for instructions in computations.values() for i in instructions}


def _collective(instruction: Instruction, computations) -> Optional[str]:
    """The collective an instruction launches (``all-reduce`` for ``all-reduce-start``)."""
    opcode = instruction.opcode.removesuffix("-start")
    if opcode in COLLECTIVES:
        return opcode
    if instruction.opcode == "async-start":
        wrapped = [i.opcode for c in instruction.called() for i in computations.get(c, [])]
        return next((op for op in wrapped if op in COLLECTIVES), None)
    return None


def collectives(hlo_text: str) -> Dict[str, Dict[str, int]]:
    """The collectives of a compiled program and the bytes each device sends into them.

    An asynchronous collective (``*-start`` / ``*-done``, or ``async-start``
    wrapping one) counts once. Bytes are the operands' (for an all-reduce, the
    reduced values; for an all-gather, the local shard), as the partitioned
    program on one device sees them.

    Args:
      hlo_text: the optimized HLO of an SPMD-partitioned program.

    Returns:
      collective -> ``{"count": n, "bytes": b}``.
    """
    entry, computations = parse(hlo_text)
    types = _types(computations)
    found: Dict[str, Dict[str, int]] = {}
    for instruction in _walk(computations, entry):
        kind = _collective(instruction, computations)
        if kind is not None:
            record = found.setdefault(kind, {"count": 0, "bytes": 0})
            record["count"] += 1
            record["bytes"] += sum(array_bytes(types.get(o, "")) for o in instruction.operands)
    return found


def custom_call_bytes(hlo_text: str) -> int:
    """The bytes the top-level custom calls read and write (operands and results).

    XLA's cost analysis counts a custom call (a cuDNN convolution) as moving
    nothing; this is the other part of the total. A result's ``u8`` scratch
    buffer (cuDNN's workspace) is left out.
    """
    entry, computations = parse(hlo_text)
    types = _types(computations)
    total = 0
    for instruction in _walk(computations, entry):
        if instruction.opcode == "custom-call":
            results = re.sub(r"\bu8\[[\d,]*\](\{[^}]*\})?", "", instruction.type)
            total += array_bytes(results)
            total += sum(array_bytes(types.get(o, "")) for o in instruction.operands)
    return total
