"""Read a cubin with the tools bundled with Triton (cuobjdump, nvdisasm): resources, instruction mix, loops.

Loops are found from the control flow: a branch to a lower address closes a loop whose body is the
address range [target, branch]. Each loop is labelled from the source lines nvdisasm attaches to its
instructions (``-gi``: inlined call chains included): ``masked`` when it evaluates the mask rule (a line of
one of the `mask_functions` given), ``plain`` when it does matrix work without it, ``other`` otherwise
(no matrix instruction, or a loop that holds other loops, counted without them).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
LINE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
TARGET = re.compile(r"`\((\.L_x_\d+)\)")
MMA_OPS = ("HGMMA", "HMMA", "QGMMA", "IMMA")
TMA_OPS = ("UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP", "UTMACCTL")

# per-architecture limits for occupancy: registers per SM, shared memory per SM / per block (bytes),
# shared memory the system reserves per block, warps per SM, blocks per SM
ARCH = {
    80: dict(regs=65536, smem_sm=167936, smem_block=166912, smem_reserved=1024, warps=64, ctas=32),
    90: dict(regs=65536, smem_sm=233472, smem_block=232448, smem_reserved=1024, warps=64, ctas=32),
}


def tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} is not bundled with this triton ({path})")
    return path


@dataclass
class Instr:
    addr: int
    text: str  # e.g. "@P2 BRA `(.L_x_1)"
    op: str  # opcode with modifiers, e.g. "HGMMA.64x64x16.F32.BF16"
    lines: Set[Tuple[str, int]] = field(default_factory=set)  # (file, line) of the source chain

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


def _opcode(text: str) -> str:
    parts = text.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def disassemble(cubin: bytes) -> Tuple[List[Instr], Dict[str, int]]:
    """Instructions (with their source lines) and the label addresses of one-kernel cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        text = subprocess.run([tool("nvdisasm"), "-c", "-gi", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(path)
    instrs: List[Instr] = []
    labels: Dict[str, int] = {}
    pending_labels: List[str] = []
    chain: Set[Tuple[str, int]] = set()
    new_block = True
    for raw in text.splitlines():
        m = LINE.search(raw)
        if m:
            if new_block:
                chain, new_block = set(), False
            chain.add((m.group(1), int(m.group(2))))
            if m.group(3):
                chain.add((m.group(3), int(m.group(4))))
            continue
        m = LABEL.match(raw)
        if m:
            pending_labels.append(m.group(1))
            continue
        m = INSTR.search(raw)
        if m:
            addr = int(m.group(1), 16)
            body = m.group(2).strip()
            ins = Instr(addr, body, _opcode(body), set(chain))
            instrs.append(ins)
            for lab in pending_labels:
                labels[lab] = addr
            pending_labels = []
            new_block = True
    return instrs, labels


def resources(cubin: bytes) -> Dict[str, int]:
    """REG / STACK / SHARED / LOCAL from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump -res-usage: no resource line in {out!r}")
    return dict(zip(("regs", "stack", "static_smem", "local"), map(int, m.groups())))


def _width(op: str) -> int:
    for w in (128, 64, 32, 16, 8):
        if f".{w}" in op or f".U{w}" in op or f".S{w}" in op:
            return w // 8
    return 4


def counts(instrs: List[Instr]) -> Dict[str, int]:
    c = dict(instructions=len(instrs), hgmma=0, hmma=0, async_copy=0, tma=0, ldg=0, stg=0, lds=0, sts=0,
             spill_store_bytes=0, spill_load_bytes=0, spill_stores=0, spill_loads=0, bar=0, shfl=0, mufu=0)
    for ins in instrs:
        b = ins.base
        if b in ("HGMMA", "QGMMA"):
            c["hgmma"] += 1
        elif b in ("HMMA", "IMMA"):
            c["hmma"] += 1
        elif b == "LDGSTS":
            c["async_copy"] += 1
        elif b in TMA_OPS:
            c["tma"] += 1
        elif b == "LDG":
            c["ldg"] += 1
        elif b == "STG":
            c["stg"] += 1
        elif b == "LDS" or b == "LDSM":
            c["lds"] += 1
        elif b == "STS" or b == "STSM":
            c["sts"] += 1
        elif b == "STL":
            c["spill_store_bytes"] += _width(ins.op)
            c["spill_stores"] += 1
        elif b == "LDL":
            c["spill_load_bytes"] += _width(ins.op)
            c["spill_loads"] += 1
        elif b == "BAR":
            c["bar"] += 1
        elif b == "SHFL":
            c["shfl"] += 1
        elif b == "MUFU":
            c["mufu"] += 1
    return c


@dataclass
class Loop:
    start: int
    end: int  # address of the closing backward branch
    inner: List["Loop"] = field(default_factory=list)


def _code_end(instrs: List[Instr]) -> Optional[int]:
    """Address of the last EXIT: the kernel's own code ends there (out-of-line blocks and the trap follow)."""
    ends = [ins.addr for ins in instrs if ins.base == "EXIT"]
    return max(ends) if ends else None


def find_loops(instrs: List[Instr], labels: Dict[str, int]) -> List[Loop]:
    """Back edges inside the kernel's own code. ptxas places the retry of an mbarrier wait (TMA loads:
    ``SYNCS...TRYWAIT``, then ``@!P BRA`` out) in blocks after the last EXIT; their branch back to the
    instruction after the wait is a return, not a loop, and is left out. So is a waterfall: ptxas moves a value
    it cannot prove warp-uniform into a uniform register (``R2UR``, an mbarrier address for ``SYNCS``) in a
    loop that runs once per distinct value among the lanes, its back edge ``@P BRA.U.ANY``; the value is the
    same on every lane (one shared-memory buffer per program), so it runs once and counts once, in the code
    that holds it."""
    loops = []
    end = _code_end(instrs)
    for ins in instrs:
        if ins.base not in ("BRA", "JMP", "BRX") or (end is not None and ins.addr > end):
            continue
        if "BRA.U.ANY" in ins.text:  # a waterfall (see the docstring): part of the code around it
            continue
        m = TARGET.search(ins.text)
        # a branch to itself is the trap after EXIT, not a loop
        if m and m.group(1) in labels and labels[m.group(1)] < ins.addr:
            loops.append(Loop(labels[m.group(1)], ins.addr))
    loops.sort(key=lambda lp: (lp.start, -lp.end))
    # merge loops sharing a header (several back edges) into the widest one
    merged: List[Loop] = []
    for lp in loops:
        if merged and merged[-1].start == lp.start:
            continue
        merged.append(lp)
    for lp in merged:
        lp.inner = [o for o in merged if o is not lp and lp.start <= o.start and o.end <= lp.end]
    return merged


def rule_lines(module=None) -> Dict[Tuple[str, int], str]:
    """(file name, line) -> rule name of every line of `module` (default `mma_kernels.ops.mask_rules`) marked
    ``# rule: NAME``: the compare of one form of the mask rule. A masked loop is named by the marks its
    instructions come from (`classify_loops`), whatever order ptxas lays the loops out in."""
    import inspect

    if module is None:
        from mma_kernels.ops import mask_rules as module
    path = inspect.getsourcefile(module)
    with open(path) as f:
        src = f.read().splitlines()
    mark = re.compile(r"#\s*rule:\s*([a-z][a-z-]*)")
    return {(os.path.basename(path), i + 1): m.group(1) for i, line in enumerate(src) if (m := mark.search(line))}


def classify_loops(instrs: List[Instr], loops: List[Loop], mask_lines: Set[Tuple[str, int]],
                   rules: Optional[Dict[Tuple[str, int], str]] = None) -> List[Dict]:
    """One record per loop: kind, static instruction count of one iteration, MMA / async-copy / spill counts.

    `rule`: the names (`rule_lines`) of the rule forms a masked loop evaluates, joined by "+" ("" if none).
    Spills are counted in the loop's own body (inner loops excluded): `spill_stores` / `spill_loads` are the
    STL / LDL instructions there, `spill_bytes` their bytes. One in a tile loop costs per tile, one in a loop
    holding the tile loops (the dK/dV kernel's GQA group loop) per iteration of that loop."""
    out = []
    for lp in loops:
        inner = [(o.start, o.end) for o in lp.inner]
        body = [i for i in instrs if lp.start <= i.addr <= lp.end and i.base != "NOP"
                and not any(a <= i.addr <= b for a, b in inner)]
        c = counts(body)
        mma = c["hgmma"] + c["hmma"]
        masked = any(i.lines & mask_lines for i in body)
        kind = "other" if inner or not mma else ("masked" if masked else "plain")
        names = sorted({rules[ln] for i in body for ln in i.lines if ln in rules}) if rules and kind == "masked" else []
        out.append(dict(kind=kind, rule="+".join(names), instructions=len(body), start=f"0x{lp.start:04x}", end=f"0x{lp.end:04x}",
                        hgmma=c["hgmma"], hmma=c["hmma"], async_copy=c["async_copy"], tma=c["tma"], ldg=c["ldg"],
                        spill_bytes=c["spill_store_bytes"] + c["spill_load_bytes"], spill_stores=c["spill_stores"],
                        spill_loads=c["spill_loads"], holds_loops=len(inner)))
    return out


def merge_unrolled(loops: List[Dict]) -> List[Dict]:
    """A plain tile loop unrolled k times (`tl.range(..., loop_unroll_factor=k)`) compiles to the unrolled loop
    and, right after it, its remainder loop (one tile per iteration: 1/k of its MMA instructions). One record for
    both: `instructions` per tile in the steady state (the unrolled body / k, to one decimal),
    `tiles_per_iteration` k, `unrolled_instructions` and `remainder_instructions` as compiled. Other loops get
    `tiles_per_iteration` 1."""
    out: List[Dict] = []
    i = 0
    while i < len(loops):
        a, b = loops[i], loops[i + 1] if i + 1 < len(loops) else None
        mma_a = a["hgmma"] + a["hmma"]
        mma_b = b["hgmma"] + b["hmma"] if b else 0
        if b and a["kind"] == b["kind"] == "plain" and mma_b and mma_a % mma_b == 0 and mma_a // mma_b >= 2:
            k = mma_a // mma_b
            out.append(dict(a, instructions=round(a["instructions"] / k, 1), tiles_per_iteration=k,
                            unrolled_instructions=a["instructions"], remainder_instructions=b["instructions"]))
            i += 2
        else:
            out.append(dict(a, tiles_per_iteration=1))
            i += 1
    return out


def occupancy(arch: int, regs: int, smem_bytes: int, num_warps: int) -> int:
    """Resident blocks per SM from registers, shared memory and warps (0: the block cannot launch)."""
    a = ARCH.get(arch, ARCH[90])
    if smem_bytes > a["smem_block"]:
        return 0
    warp_regs = -(-max(regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256 registers
    by_regs = a["regs"] // (warp_regs * num_warps)
    by_smem = a["smem_sm"] // (smem_bytes + a["smem_reserved"])
    by_warps = a["warps"] // num_warps
    return max(0, min(by_regs, by_smem, by_warps, a["ctas"]))


def function_lines(*fns) -> Set[Tuple[str, int]]:
    """(file name, line) of every source line of the given Python/JIT functions.

    File names without their folder: Triton's cache keys on the source text, so a cubin built from an
    identical copy elsewhere (another checkout) is reused with that copy's paths and the same lines.
    """
    import inspect

    out = set()
    for fn in fns:
        f = getattr(fn, "fn", fn)
        name = os.path.basename(inspect.getsourcefile(f))
        src, first = inspect.getsourcelines(f)
        out |= {(name, first + i) for i in range(len(src))}
    return out


def analyse(cubin: bytes, arch: int, num_warps: int, smem_bytes: int, mask_lines: Set[Tuple[str, int]],
            rules: Optional[Dict[Tuple[str, int], str]] = None) -> Dict:
    """Resources, instruction mix and the loops of one cubin (`classify_loops`; `rules` default `rule_lines()`)."""
    instrs, labels = disassemble(cubin)
    for ins in instrs:
        ins.lines = {(os.path.basename(f), n) for f, n in ins.lines}
    res = resources(cubin)
    c = counts(instrs)
    found = find_loops(instrs, labels)
    loops = merge_unrolled(classify_loops(instrs, found, mask_lines, rule_lines() if rules is None else rules))
    # spill instructions outside every loop: run once per program
    outside = counts([i for i in instrs if not any(lp.start <= i.addr <= lp.end for lp in found)])
    return dict(regs=res["regs"], stack_bytes=res["stack"], spill_bytes=c["spill_store_bytes"] + c["spill_load_bytes"],
                spill_store_bytes=c["spill_store_bytes"], spill_load_bytes=c["spill_load_bytes"],
                smem_bytes=smem_bytes, ctas_per_sm=occupancy(arch, res["regs"], smem_bytes, num_warps),
                hgmma=c["hgmma"], hmma=c["hmma"], async_copy=c["async_copy"], tma=c["tma"], ldg=c["ldg"],
                instructions=c["instructions"], loops=loops,
                spill_instructions=c["spill_stores"] + c["spill_loads"],
                spill_instructions_outside_loops=outside["spill_stores"] + outside["spill_loads"],
                spill_bytes_outside_loops=outside["spill_store_bytes"] + outside["spill_load_bytes"])
