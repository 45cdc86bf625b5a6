"""The rollout engine's schedule replayed from prompt and response lengths alone: no model, no device.

Why: the step-time model (bench/generate.py --reads) prices a rollout step by step, and it needs the steps the engine
would run (rows, slot buckets, the KV slots each step reads, prefills, preemptions) at the paper's shape, which no CPU
can decode. `paged_schedule` drives adamame.paging.Scheduler exactly as adamame.generate.generate does, so its steps
are the engine's (tests/test_generate.py checks them against generate with forced lengths). `static_schedule` replays
the static cache the engine had before paging (refill, compaction at COMPACT_AT), for the "before" side of the model.

Row-slots read: with the decode kernel each active row's own slots (its tokens so far, incl. the new one) and, once per
group of rows sharing it (adamame.paging.Scheduler.prompt_groups), the prompt; with SDPA rows x slots of the bucket;
`useful` counts what the kernel reads (for the static cache: each active row's prompt and tokens). Multiply by the
bytes of a slot (2 x layers x kv heads x head_dim x itemsize) for bytes. trace=True adds `steps_trace`, one (rows
run, slots, rows in flight, active rows, row-slots read) per step, and `events`: ("prefill", samples, 1, tokens
prefilled) per admission and, for the static cache, ("compact", rows kept, slots moved) per compaction.
"""

import numpy as np

from adamame.generate import SLOT_BUCKET, cache_slots, row_bucket, step_buckets
from adamame.paging import BLOCK, Scheduler, group_rows

COMPACT_AT = 0.75  # the static engine dropped finished rows once the live ones were at most this share


def paged_schedule(prompt_lens, response_lens, max_new_tokens, *, n=1, rows=None, blocks=None, check_every=8,
                   slot_bucket=SLOT_BUCKET, pad_rows=True, kernel=True, reserve=None, rows_fn=row_bucket,
                   forced=False, rep=1, trace=False) -> dict:
    """generate's paged schedule for samples whose prompts have `prompt_lens` tokens (one per sample; samples s // n
    share a prompt) and whose responses have `response_lens` tokens (the last one the stop token when shorter than
    max_new_tokens), in a cache of `blocks` blocks (None: `rows` full-length rows, as generate's max_rows; None: one
    per sample), at most len(samples) rows in flight. A sample's limit is max_new_tokens (its response ends with a
    stop token), or with forced=True its response length (generate's response_lengths hook). rep: the model's query
    heads per kv head (how many rows one read of a shared prompt serves: adamame.paging.group_rows)."""
    plen, resp = list(prompt_lens), [min(r, max_new_tokens) for r in response_lens]
    N, Tp = len(plen), max(plen)
    S = cache_slots(Tp, max_new_tokens)
    blocks = blocks or min(rows or N, N) * (S // BLOCK) + 1
    limits = resp if forced else [max_new_tokens] * N
    sched = Scheduler(plen[::n], n, limits, blocks, check_every, N, reserve=reserve)
    out = {"steps": 0, "read": 0, "useful": 0, "rows_run": 0, "rows_active": 0, "tokens": sum(resp), "prefills": 0,
           "prefill_tokens": 0, "rows_in_flight": 0, "most_rows": 0}
    buckets, steps_trace, events = set(), [], []
    steps, done = 0, set()
    while True:
        look = sched.look(steps, done)
        tokens = sum(plen[g * n] for g in look.prefill) + sum(plen[r.sample] + r.t0 - 1 for r in look.admitted
                                                              if not r.fresh)
        if look.admitted:
            events.append(("prefill", len(look.admitted), 1, tokens))
        out["prefills"] += len(look.prefill)
        out["prefill_tokens"] += tokens
        if not sched.rows:
            break
        live = len(sched.rows)
        out["most_rows"] = max(out["most_rows"], live)
        offset = sched.max_slot_offset()
        own = np.array([r.t0 - r.born for r in sched.rows])  # + steps: a row's own slots (after its prompt)
        prompt = np.array([plen[r.sample] for r in sched.rows])
        end = np.array([r.born + resp[r.sample] - r.t0 for r in sched.rows])  # active while steps < end
        members, _ = sched.prompt_groups(group_rows(rep))  # a shared prompt is read once for its rows (cascade)
        lead_of = np.zeros(live, dtype=np.int64)
        for i, m in enumerate(members):
            lead_of[m] = i
        for _ in range(min(check_every, sched.end_step() - steps)):
            run, slots = step_buckets(live, min(offset + steps, S - 1), N, S, slot_bucket=slot_bucket,
                                      pad_rows=pad_rows, rows_fn=rows_fn)
            buckets.add((run, slots))
            active = end > steps
            n_active = int(active.sum())
            useful = int(own[active].sum()) + steps * n_active + int(prompt[np.unique(lead_of[active])].sum())
            read = useful if kernel else run * slots
            out["steps"] += 1
            out["useful"] += useful
            out["read"] += read
            out["rows_run"] += run
            out["rows_active"] += n_active
            out["rows_in_flight"] += live
            if trace:
                steps_trace.append((run, slots, live, n_active, read))
            steps += 1
        done = {i for i, r in enumerate(sched.rows) if r.t(steps) >= resp[r.sample]}
    out.update(preemptions=sched.preemptions, recomputed=sched.recomputed, blocks=blocks, graphs=len(buckets))
    out["rows_in_flight"] /= max(1, out["steps"])
    return {**out, **({"steps_trace": steps_trace, "events": events} if trace else {})}


def static_schedule(prompt_lens, response_lens, max_new_tokens, *, rows=None, n=1, kernel: bool, pad_rows: bool = True,
             check_every=8, slot_bucket=SLOT_BUCKET, rows_fn=row_bucket, trace=False) -> dict:
    """The static cache's schedule (the engine before paging, commit 6a718db), for samples whose prompts have
    `prompt_lens` tokens and whose responses have `response_lens` tokens (the last one the stop token when <
    max_new_tokens), in a cache of `rows` rows (None: one per sample; samples s // n share a prompt), as it ran: admission into free rows in
    sample order, one token per step, a host look every check_every steps, compaction at COMPACT_AT once no sample
    waits. Returns the decode steps, the
    (rows, slots) buckets visited (= CUDA graphs captured) and per step the cache row-slots read: with the kernel
    each active row's own slots (prompt and tokens so far, incl. the new one), with SDPA rows x slots; `useful`
    counts the active rows' own slots (what any exact kernel must read). Multiply row-slots by the bytes of a slot
    (2 x layers x kv heads x head_dim x itemsize) for bytes. trace=True adds `steps_trace`, one (rows run, slots,
    live rows, active rows, row-slots read) per step, and `events`: ("prefill", samples, distinct prompts, padded
    prompt length) per admission and ("compact", rows kept, slots moved) per compaction."""
    plen, resp = list(prompt_lens), list(response_lens)
    N, Tp = len(plen), max(plen)
    S, B = -(-(Tp + max_new_tokens) // 16) * 16, min(rows or len(plen), len(plen))
    out = {"steps": 0, "read": 0, "useful": 0, "rows_run": 0, "rows_active": 0, "tokens": sum(resp), "prefills": 0}
    buckets, steps_trace, events = set(), [], []
    waiting = list(range(N))[::-1]  # popped from the end: sample order
    row_s, row_t = [0] * B, [0] * B  # each row's sample and tokens drawn

    def admit(free):
        took = [(r, waiting.pop()) for r in free[:len(waiting)]]
        for r, s in took:
            row_s[r], row_t[r] = s, 1
        events.append(("prefill", len(took), len({s // n for _, s in took}), Tp))

    def done(r):
        return row_t[r] >= resp[row_s[r]]

    admit(list(range(B)))
    k = 1
    while True:
        length_done = min(row_t) >= max_new_tokens
        if length_done and not waiting:
            break
        if k % check_every == 0 or length_done:
            free = [r for r in range(len(row_s)) if done(r)]
            if waiting and free:
                admit(free)
            if not waiting:
                keep = [r for r in range(len(row_s)) if not done(r)]
                if not keep:
                    break
                if len(keep) <= COMPACT_AT * len(row_s):
                    events.append(("compact", len(keep), min(Tp + max(row_t) - 1, S)))
                    row_s, row_t = [row_s[r] for r in keep], [row_t[r] for r in keep]
            if min(row_t) >= max_new_tokens:
                continue
        last = min(Tp + max(row_t) - 1, S - 1)
        run, slots = step_buckets(len(row_s), last, B, S, slot_bucket=slot_bucket, pad_rows=pad_rows, rows_fn=rows_fn)
        buckets.add((run, slots))
        active = [r for r in range(len(row_s)) if not done(r)]
        useful = sum(plen[row_s[r]] + row_t[r] for r in active)
        read = useful if kernel else run * slots
        out["steps"] += 1
        out["useful"] += useful
        out["read"] += read
        out["rows_run"] += run
        out["rows_active"] += len(active)
        if trace:
            steps_trace.append((run, slots, len(row_s), len(active), read))
        row_t = [t + 1 for t in row_t]
        k += 1
    out["prefills"] = sum(e[2] for e in events if e[0] == "prefill")  # prompt prefills (shared by their samples)
    extra = {"steps_trace": steps_trace, "events": events} if trace else {}
    return {**out, "graphs": len(buckets), **extra}
