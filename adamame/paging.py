"""Who holds which KV-cache block: the rollout engine's admission, growth and preemption, in plain Python.

Why: a static cache reserves prompt + max_new_tokens slots for every row, yet on an average step of a GRPO rollout
only about a third of them hold a token; a row that ends early wastes the rest, and the cache's rows, not its
memory, bound the rows in flight. Here the cache is a pool of blocks of BLOCK slots and each row holds only the blocks
it has written, so the same memory keeps more rows decoding and a rollout takes fewer steps (each step re-reads every
weight once). A group's prompt is prefilled once into blocks its samples share (the prompt is placed so that it ends
on a block boundary: a sample never writes into a shared block).

The policy (vLLM's, with a reserve): at each look of the engine (every check_every steps)
  * finished rows are dropped and their own blocks freed; a group's prompt blocks are freed with its last sample;
  * every running row gets the blocks its next check_every tokens write, oldest row first; when none is free the
    newest row is preempted: its blocks are freed and its sample waits again at the head of the queue, to be
    re-admitted later with the keys and values of its tokens so far recomputed (nothing is lost or changed: its
    tokens are keyed by (sample, token index));
  * waiting samples are admitted in order while the blocks cover every running row's projected length, at least
    RESERVE response tokens (or the sample's limit), and the newcomer's.

This module decides; adamame/generate.py carries the decisions out on the device, and bench/schedule.py replays
them from known response lengths (the same Scheduler, so the replay is the engine's schedule, not a model of it).

Imports: none beyond the standard library.
"""

from dataclasses import dataclass, field

BLOCK = 32  # slots per block: decode_attention's BLOCK_S, so its kernel loads one block id per inner block
RESERVE = 2048  # response tokens each running row is assumed to reach when a new sample is admitted
SCRATCH = 0  # block 0 is never handed out: a table's unused entries point at it, and writes there are dropped
GROUP = 8  # rows whose shared prompt one read of the decode kernel serves (adamame/decode_attention.py's cascade)
QUERIES = 32  # ... and at most this many query heads (rows x the query heads of a kv head, rounded up to a power of 2)


def group_rows(rep: int) -> int:
    """Rows one prompt read serves, for `rep` query heads per kv head (decode_attention's PREFIX_QUERIES)."""
    return max(1, min(GROUP, QUERIES // (1 << max(0, rep - 1).bit_length())))


def lead(prompt_len: int) -> int:
    """Slots before a prompt in its first block: the prompt then ends on a block boundary."""
    return -prompt_len % BLOCK


def blocks_for(slots: int) -> int:
    return -(-slots // BLOCK)


def most_rows(blocks: int, max_new_tokens: int, reserve: int | None = None) -> int:
    """The most rows admission lets run at once in a pool of `blocks` blocks: each running row is projected to hold at
    least min(max_new_tokens, reserve) response tokens of its own (the memory plan sizes per-row buffers by it)."""
    per_row = blocks_for(min(max_new_tokens, RESERVE if reserve is None else reserve))
    return max(1, (blocks - 1) // per_row)


@dataclass
class Row:
    sample: int
    t0: int  # tokens drawn when the row was (re)admitted (a fresh sample draws its first at admission)
    born: int  # the step count at admission: the row has drawn t0 + (steps - born) tokens
    first: int  # its first own logical block (the shared prompt's blocks come before)
    blocks: list = field(default_factory=list)  # own physical blocks, logical blocks first, first + 1, ...
    fresh: bool = True  # admitted for the first time (else re-admitted after a preemption)

    def t(self, steps: int) -> int:
        return self.t0 + steps - self.born


@dataclass
class Look:
    """One look's decisions, in the order the engine applies them: keep these rows (old indices, in order), give kept
    row i the new own blocks grown[i] = (first logical block, [physical blocks]), prefill these groups' prompts into
    their blocks, and append `admitted` rows (Row objects, already in the scheduler's rows)."""
    keep: list
    grown: dict
    prefill: list
    admitted: list


class Scheduler:
    """The block pool and the rows in flight of one generate call. prompt_lens [groups], n samples a group (sample s
    is group s // n's), limits [samples] (each sample's most tokens), `blocks` in the pool (block 0 the scratch)."""

    def __init__(self, prompt_lens, n: int, limits, blocks: int, check_every: int, max_rows: int, *,
                 reserve: int | None = None):
        self.plen, self.n, self.limit = list(prompt_lens), n, list(limits)
        self.every, self.max_rows = check_every, max_rows
        self.reserve = RESERVE if reserve is None else reserve
        self.free = list(range(blocks - 1, SCRATCH, -1))  # popped from the end: low ids first
        self.total = blocks - 1
        self.waiting = [(s, 0) for s in range(len(self.limit))][::-1]  # (sample, tokens drawn), popped from the end
        self.rows: list[Row] = []
        self.prompt_blocks: dict = {}  # group -> its prompt's physical blocks, while any of its samples lives
        self.left = [n] * len(self.plen)  # a group's samples not finished
        self.preemptions = self.recomputed = 0

    # --- sizes
    def prompt_nblocks(self, g: int) -> int:
        return (lead(self.plen[g]) + self.plen[g]) // BLOCK

    def own_needed(self, s: int, tokens: int) -> int:
        """Own blocks of sample s once tokens [0, tokens) have been written after its prompt."""
        g = s // self.n
        return blocks_for(lead(self.plen[g]) + self.plen[g] + tokens) - self.prompt_nblocks(g)

    def projected(self, row: Row, steps: int) -> int:
        t = row.t(steps)
        return self.own_needed(row.sample, min(self.limit[row.sample], max(t + self.every, self.reserve)))

    def next_slot(self, row: Row, steps: int) -> int:
        """The logical cache slot of the token the row feeds at its next decode step."""
        p = self.plen[row.sample // self.n]
        return lead(p) + p + row.t(steps) - 1

    def max_slot_offset(self) -> int:
        """max over rows of next_slot(row, steps) - steps (the host's view of the decode step's slot bucket)."""
        return max(self.next_slot(r, 0) for r in self.rows)

    def end_step(self) -> int:
        """The step count at which every row has drawn its limit (the engine looks then, whatever the cadence)."""
        return max(r.born + self.limit[r.sample] - r.t0 for r in self.rows)

    # --- the look
    def look(self, steps: int, done: set) -> Look:
        kept = []
        for i, r in enumerate(self.rows):
            if i in done:
                self._release(r, finished=True)
            else:
                kept.append((i, r))
        # grow the running rows (oldest first) for their next check_every writes; preempt the newest when out
        grown = {}
        j = 0
        while j < len(kept):
            i, r = kept[j]
            want = self.own_needed(r.sample, min(r.t(steps) - 1 + self.every, self.limit[r.sample]))
            new = []
            while len(r.blocks) + len(new) < want:
                if not self.free:
                    if j == len(kept) - 1:  # this row is the newest: it goes
                        break
                    self._preempt(kept.pop()[1], steps)
                    continue
                new.append(self.free.pop())
            if len(r.blocks) + len(new) < want:
                self.free.extend(reversed(new))
                self._preempt(kept.pop()[1], steps)
                continue
            if new:
                grown[j] = (r.first + len(r.blocks), new)
                r.blocks += new
            j += 1
        self.rows = [r for _, r in kept]
        keep = [i for i, _ in kept]
        # admit waiting samples while every running row's projected blocks fit
        admitted, prefill = [], []
        committed = sum(len(b) for b in self.prompt_blocks.values()) + sum(self.projected(r, steps) for r in self.rows)
        while self.waiting and len(self.rows) < self.max_rows:
            s, t = self.waiting[-1]
            g = s // self.n
            need_prompt = 0 if g in self.prompt_blocks else self.prompt_nblocks(g)
            proj = self.own_needed(s, min(self.limit[s], max(t + self.every, self.reserve)))
            first_write = self.own_needed(s, min(max(t, 1) - 1 + self.every, self.limit[s]))
            if self.rows and committed + need_prompt + proj > self.total:
                break
            if need_prompt + first_write > len(self.free):
                if not self.rows:
                    raise MemoryError(f"generate: the KV cache's {self.total} blocks of {BLOCK} slots cannot hold one "
                                      f"sample's prompt and {self.every} tokens: use a larger cache")
                break
            self.waiting.pop()
            if need_prompt:
                self.prompt_blocks[g] = [self.free.pop() for _ in range(need_prompt)]
                prefill.append(g)
            row = Row(s, max(t, 1), steps, self.prompt_nblocks(g), [self.free.pop() for _ in range(first_write)],
                      fresh=t == 0)
            if t:
                self.recomputed += t - 1
            self.rows.append(row)
            admitted.append(row)
            committed += need_prompt + proj
        return Look(keep, grown, prefill, admitted)

    def prompt_groups(self, rows: int = GROUP) -> tuple:
        """For the decode kernel's cascade: per row in flight, the rows whose shared prompt it reads for all of them
        (itself first; at most `rows`, group_rows(rep); [] for a row another row reads for), and the logical slot
        where its prompt ends (its own slots start there)."""
        members, lead_of, pend = [[] for _ in self.rows], {}, []
        for i, r in enumerate(self.rows):
            g = r.sample // self.n
            if g not in lead_of or len(members[lead_of[g]]) == rows:
                lead_of[g] = i
            members[lead_of[g]].append(i)
            pend.append(lead(self.plen[g]) + self.plen[g])
        return members, pend

    def table_row(self, row: Row) -> list:
        return self.prompt_blocks[row.sample // self.n] + row.blocks

    def _release(self, row: Row, finished: bool) -> None:
        self.free.extend(reversed(row.blocks))
        row.blocks = []
        g = row.sample // self.n
        if finished:
            self.left[g] -= 1
            if not self.left[g]:
                self.free.extend(reversed(self.prompt_blocks.pop(g)))

    def _preempt(self, row: Row, steps: int) -> None:
        self._release(row, finished=False)
        self.waiting.append((row.sample, row.t(steps)))
        self.preemptions += 1
