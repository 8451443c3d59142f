"""The miniature SimpleRL-Zero study and the blog's other arms, end to end on a CPU, in one command.

    python demo.py              # ~15 minutes on 2 cores (879 s measured); a second run reuses the steps already done
    python demo.py --fresh      # start over (deletes only what the demo wrote in its run directory)
    python demo.py --zero-only  # only the SimpleRL-Zero study (its four steps)

The story of the paper in a world small enough to watch: a weak "base" model that answers in
several styles (boxed, the answer in one go; "The answer is N." after working column by column;
the column work padded with a code snippet and no box, the way Qwen2.5-Math-7B pads its answers
with code; and, rarely, an answer that checks itself: "let me check:" column by column, "wait, not
N" after a slip, the checked value boxed), then PPO with nothing but the rule-based reward (+1 boxed
and right, -0.5 boxed and wrong, -1 no box). RL first drops the unrewarded styles (format rate rises,
responses get shorter), then discovers that checking pays (the reflection share and the response
length rise, and so does accuracy): the blog's "aha moment", in a minute of RL.

Every step runs one of the project's scripts, the same ones the GPU recipe runs, with --preset tiny:

    1 data      python data/make_synth_data.py --out RUN/synth
    2 base      python sft.py  --preset tiny --train-file RUN/synth/base.jsonl      a brief "pretraining"
    3 ppo       python ppo.py  --preset tiny --model RUN/base/final                 SimpleRL-Zero
    4 eval      python evaluate.py --preset tiny --model RUN/base/final RUN/ppo/checkpoint-*/actor ...
  and the blog's other arms, from the same base (--zero-only skips them):
    5 sft_ref   python sft.py --model RUN/base/final --train-file RUN/synth/train.jsonl    SFT, reference solutions
    6 teacher   python sft.py --model RUN/base/final --train-file RUN/teacher.jsonl        self-checking solutions
    7 distill   python distill.py --model RUN/teacher/final                               the long-CoT warm-up data
    8 warmup    python sft.py --model RUN/base/final --train-file RUN/distill/long_cot.jsonl
    9 simplerl  python ppo.py --model RUN/warmup/final                                   SimpleRL: warm-up, then RL
   10 eval_arms python evaluate.py --model RUN/base/final RUN/sft_ref/final RUN/ppo/final/actor ...

Each is one process with 2 intra-op threads (plain `python`, a world of one: the same code as torchrun's
ranks; for a 1M-parameter model on 2 cores about twice as fast as torchrun's 2 ranks x 1 thread, whose gloo
collectives cost more than the second rank saves: docs/demo.md). It prints the before/after table (the paper's
layout, with the reflection share and mean length), the sampled rollouts' arc (length at the start, its
minimum, at the end; reflection share), the blog's two tables (SFT vs RL; warm-up, then RL), the distilled
data's size and pass rate, and the paths of the pictures: RUN/ppo/curves.png (training dynamics),
RUN/eval/accuracy_vs_step.png (held-out accuracy and response length against step) and RUN/arms_curves.png
(both RL runs' length and reflection share). --quick (CI) runs the arms tiny: a wiring check, not the story.
A step is done when its marker file RUN/<step>.done exists; a step that did not finish (a crash, Ctrl-C, a
kill) continues from its last checkpoint on the next run.

RUN is --run-dir (default runs/demo), relative to the current directory. The demo writes a
`.simplerl-demo` file into the run directory it makes and never uses or deletes a non-empty directory
without it; --fresh deletes only the files the demo writes there. Stopping the demo (Ctrl-C, SIGTERM,
even SIGKILL) stops the training processes it started too.
"""
import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent


BASE_STEPS = "800"  # SFT steps of the base model's "pretraining" (a cosine schedule over them), unless --stop-at-accuracy
# RL steps: the whole arc (length falls, then rises with "let me check") fits with room to spare. Float kernels
# differ between CPUs, so the same seeds take different paths: on Zen 4 the arc ended by step ~35, on a Xeon
# by ~48 (docs/demo.md).
PPO_STEPS, PPO_STEPS_QUICK = 70, 50
CRITIC_WARMUP = "5"  # RL steps that train only the critic first (the preset's 30 would be most of this short run)
LEVELS = "1,2"  # what a 1M-parameter model learns in minutes on a CPU; levels 3-5 need far more compute
MARKER = ".simplerl-demo"  # written into the run directory the demo makes: what --fresh may clean
STEP_NAMES = ("data", "base", "ppo", "eval")
# the blog's other arms, after the Zero study (simplerl_steps; --zero-only skips them)
ARM_NAMES = ("sft_ref", "teacher", "distill", "warmup", "simplerl", "eval_arms")
DEMO_FILES = ("synth", "base", "ppo", "eval", "eval_data", *(f"{n}.done" for n in STEP_NAMES),  # --fresh
              *ARM_NAMES, *(f"{n}.done" for n in ARM_NAMES), "teacher.jsonl", "arms_curves.png")
ARM_SFT_STEPS = "200"  # SFT steps (32 sequences) of each fine-tune of the base: reference solutions, warm-up
TEACHER_STEPS = "300"  # SFT steps that make the teacher: the base fine-tuned on self-checking solutions only
DISTILL_PROMPTS = "2000"  # training problems the teacher answers (one sample each, the correct ones kept)
SIMPLERL_STEPS = 40  # RL steps from the warm-up (the Zero study's 70 would not fit the 15 minutes; docs/demo.md)
# --quick's arms: the same commands, sized to check the wiring (every row of both tables, the distilled data's
# pass rate and size), not to tell the story: a few SFT steps, 3 RL steps
ARM_SFT_STEPS_QUICK, TEACHER_STEPS_QUICK, DISTILL_PROMPTS_QUICK, SIMPLERL_STEPS_QUICK = "20", "60", "200", 3

# The process layout: every stage is one process with THREADS intra-op threads (a world of one, through the same
# code as torchrun's ranks). For a ~1M-parameter model on 2 cores this is faster than torchrun's 2 ranks x 1
# thread, whose gloo collectives per micro-batch cost more than the second rank saves (docs/demo.md: measured).
RANKS, THREADS = 1, 2


# The tiny world's settings the demo changes, on the command line (the presets stay as other runs use them):
# responses that check themselves are longer, up to 82 tokens with EOS (a first answer, "let me check:" column by
# column, "wait, not N", the box), so SFT windows, rollouts and evals are longer than the preset's 64 / 48.
SFT_WINDOW = ["--max-length", "96", "--generate-max-len", "84"]
RESPONSE_BUDGET = "84"


def launch(script: str) -> list[str]:
    """A training script's command: torchrun with RANKS ranks, or (RANKS 1) plain python, a world of one."""
    if RANKS == 1:
        return [sys.executable, script]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}", script]


def steps(run: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, command) in the order they run. --quick is the CI-sized version of the same study."""
    # The base model: BASE_STEPS of SFT, or fewer if a periodic eval reaches 20% first (a guard: the 800-step base
    # ends near 15%). PPO runs a fixed number of RL steps. Both: the same result on any machine, however loaded.
    ppo_steps = PPO_STEPS_QUICK if quick else PPO_STEPS
    base_accuracy, ppo_save, ppo_eval = "0.2", 10, 10
    return [
        ("data", [sys.executable, "data/make_synth_data.py", "--out", str(run / "synth")]),
        ("base", launch("sft.py") + ["--preset", "tiny", "--train-file", str(run / "synth/base.jsonl"),
                             "--test-file", str(run / "synth/test.jsonl"), "--levels", LEVELS,
                             "--max-steps", BASE_STEPS, "--eval-every", "100", "--eval-size", "200",
                             "--stop-at-accuracy", base_accuracy, "--save-every", "0", "--resume",
                             *SFT_WINDOW, "--output-dir", str(run / "base")]),
        ("ppo", launch("ppo.py") + ["--preset", "tiny", "--model", str(run / "base/final"),
                            "--train-file", str(run / "synth/train.jsonl"),
                            "--test-file", str(run / "synth/test.jsonl"), "--levels", LEVELS,
                            "--max-steps", str(ppo_steps), "--save-every", str(ppo_save),
                            "--eval-every", str(ppo_eval), "--keep-checkpoints", "0", "--resume",
                            "--generate-max-len", RESPONSE_BUDGET, "--critic-warmup-steps", CRITIC_WARMUP,
                            "--output-dir", str(run / "ppo")]),
        ("eval", None),  # built after PPO, from the checkpoints it left
    ]


def teacher_rows(run: Path) -> Path:
    """The teacher's data: the levels' training problems, each solved in the self-checking style
    (make_synth_data's `reflective`: the answer, "let me check:" column by column, "wait, not N" after a slip,
    the checked value boxed)."""
    sys.path.insert(0, str(ROOT / "data"))
    import make_synth_data as synth
    keep = {int(x) for x in LEVELS.split(",")}
    rows = [json.loads(line) for line in (run / "synth/train.jsonl").read_text().splitlines()]
    out = run / "teacher.jsonl"
    out.write_text("".join(json.dumps(synth.styled(r, "reflective", *synth.parse(r["question"]))) + "\n"
                           for r in rows if r["level"] in keep))
    return out


def simplerl_steps(run: Path, quick: bool) -> list[tuple[str, list[str] | None]]:
    """The blog's other arms, from the same base and with the same settings as the Zero study's steps:
    (a) SFT on the same problems' reference solutions; (b) a teacher that writes long self-checking
    solutions, distilled (distill.py) into the base: the long-CoT warm-up; (c) SimpleRL: the Zero study's PPO
    from (b)."""
    sft = launch("sft.py") + ["--preset", "tiny", "--model", str(run / "base/final"), "--test-file", "",
                              "--save-every", "0", "--resume", *SFT_WINDOW]
    sft_steps = ARM_SFT_STEPS_QUICK if quick else ARM_SFT_STEPS
    ppo = dict(steps(run, quick))["ppo"]
    ppo = ppo[:ppo.index("--model") + 1] + [str(run / "warmup/final")] + ppo[ppo.index("--model") + 2:-1] \
        + [str(run / "simplerl")]
    ppo[ppo.index("--max-steps") + 1] = str(SIMPLERL_STEPS_QUICK if quick else SIMPLERL_STEPS)
    return [
        ("sft_ref", sft + ["--train-file", str(run / "synth/train.jsonl"), "--max-steps", sft_steps,
                           "--output-dir", str(run / "sft_ref")]),
        ("teacher", None),  # its data is written first (teacher_rows)
        ("distill", [sys.executable, "distill.py", "--preset", "tiny", "--model", str(run / "teacher/final"),
                     "--prompt-file", str(run / "synth/train.jsonl"),
                     "--limit", DISTILL_PROMPTS_QUICK if quick else DISTILL_PROMPTS, "--n", "1",
                     "--generate-max-len", RESPONSE_BUDGET, "--output-dir", str(run / "distill")]),
        ("warmup", sft + ["--train-file", str(run / "distill/long_cot.jsonl"), "--levels", "",
                          "--max-steps", sft_steps, "--output-dir", str(run / "warmup")]),
        ("simplerl", ppo),
        ("eval_arms", [sys.executable, "evaluate.py", "--preset", "tiny",
                       "--data-dir", str(run / "eval_data"),
                       "--model", *(str(run / m) for m in ("base/final", "sft_ref/final", "ppo/final/actor",
                                                           "warmup/final", "simplerl/final/actor")),
                       "--generate-max-len", RESPONSE_BUDGET, "--output-dir", str(run / "eval_arms")]),
    ]


def teacher_command(run: Path, quick: bool = False) -> list[str]:
    return launch("sft.py") + ["--preset", "tiny", "--model", str(run / "base/final"),
                               "--train-file", str(teacher_rows(run)), "--test-file", "",
                               "--max-steps", TEACHER_STEPS_QUICK if quick else TEACHER_STEPS, "--save-every", "0",
                               "--resume", *SFT_WINDOW, "--output-dir", str(run / "teacher")]


def held_out_split(run: Path) -> Path:
    """evaluate.py reads <data-dir>/synth/test.jsonl: give it the test problems of the levels studied."""
    keep = {int(x) for x in LEVELS.split(",")}
    out = run / "eval_data" / "synth" / "test.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [line for line in (run / "synth/test.jsonl").read_text().splitlines() if json.loads(line)["level"] in keep]
    out.write_text("\n".join(rows) + "\n")
    return out.parent.parent


def eval_command(run: Path) -> list[str]:
    """Base model (step 0), every PPO checkpoint, and the final actor: accuracy against step."""
    ppo_dir = run / "ppo"
    ckpts = sorted(ppo_dir.glob("checkpoint-*/actor"), key=lambda p: int(p.parent.name.split("-")[1]))
    records = [json.loads(line) for line in (ppo_dir / "metrics.jsonl").read_text().splitlines()]
    models = [run / "base/final", *ckpts, ppo_dir / "final/actor"]
    step_ids = [0, *(int(c.parent.name.split("-")[1]) for c in ckpts), records[-1]["step"]]
    return [sys.executable, "evaluate.py", "--preset", "tiny", "--data-dir", str(held_out_split(run)),
            "--model", *map(str, models), "--steps", ",".join(map(str, step_ids)), "--generate-max-len", RESPONSE_BUDGET,
            "--output-dir", str(run / "eval")]


def run_step(name: str, cmd: list[str], run: Path, fresh: bool) -> None:
    marker = run / f"{name}.done"
    if marker.exists() and not fresh:
        print(f"[demo] {name}: done before, reusing ({marker})", flush=True)
        return
    print(f"\n[demo] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(THREADS), PYTHONUNBUFFERED="1")
    returncode = run_in_own_group(cmd, env)
    if returncode != 0:
        raise SystemExit(f"[demo] {name} failed with exit code {returncode}; fix it and rerun "
                         f"`python demo.py` to continue from this step")
    marker.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "command": cmd}) + "\n")
    print(f"[demo] {name}: finished in {time.time() - t0:.0f} s", flush=True)


def _die_with_demo() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the demo dies, even by SIGKILL (torchrun
    then stops its workers)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_in_own_group(cmd: list[str], env: dict) -> int:
    """Run a step in its own process group; if the demo is stopped (Ctrl-C, SIGTERM), the whole group
    (torchrun and its workers) is stopped with it, never left training as orphans."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, preexec_fn=_die_with_demo)
    try:
        return proc.wait()
    except BaseException:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def prepare_run_dir(run_dir: str, fresh: bool, quick: bool = False) -> Path:
    """--run-dir relative to the current directory. A non-empty directory the demo did not make is never
    used or deleted; --fresh deletes only the demo's own files in it. A --quick study and the full one never
    share a directory: the full run would reuse the quick run's steps (its 30-step PPO as the 40-step one)."""
    run = Path(run_dir).expanduser().resolve()
    mode = "quick" if quick else "full"
    if run.exists() and not run.is_dir():
        raise SystemExit(f"[demo] --run-dir {run} exists and is not a directory")
    ours = (run / MARKER).is_file() or any((run / f"{n}.done").is_file() for n in STEP_NAMES)
    if run.is_dir() and any(run.iterdir()) and not ours:
        raise SystemExit(f"[demo] --run-dir {run} is not empty and was not made by demo.py (it has no {MARKER} "
                         f"file): choose a new or empty directory. Nothing was changed.")
    made = (run / MARKER).read_text() if (run / MARKER).is_file() else ""
    other = next((m for m in ("quick", "full") if f"mode: {m}\n" in made and m != mode), None)
    if other and not fresh and any((run / f"{n}.done").is_file() for n in STEP_NAMES):
        raise SystemExit(f"[demo] --run-dir {run} holds a {other} study; this {mode} one would reuse its steps: "
                         f"pass --fresh to redo it there, or another --run-dir. Nothing was changed.")
    if fresh:
        for name in DEMO_FILES:
            p = run / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    run.mkdir(parents=True, exist_ok=True)
    (run / MARKER).write_text("made by demo.py; `python demo.py --fresh` deletes the demo's files here\n"
                              f"mode: {mode}\n")
    return run


def sample_stats(path: Path) -> dict:
    """Held-out accuracy, boxed share, reflection share and mean length of one model's greedy answers."""
    from ppo import REFLECTION
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"acc": 100 * mean([bool(s["correct"]) for s in samples]),
            "boxed": 100 * mean(["boxed" in s["response"] for s in samples]),
            "reflection": 100 * mean([bool(REFLECTION.search(s["response"])) for s in samples]),
            "length": mean([s["length"] for s in samples])}


# The blog's two tables, in the tiny world: row name -> the evaluated model's label (eval_arms).
ARM_TABLES = {
    "SFT vs RL on the same problems (the blog's first table)": {
        "base": "base/final", "base + SFT on the reference solutions": "sft_ref/final",
        "SimpleRL-Zero (RL from the base)": "ppo/final"},
    "long-CoT warm-up, then RL (the blog's second table)": {
        "base + distilled long-CoT warm-up": "warmup/final", "SimpleRL (warm-up, then RL)": "simplerl/final",
        "SimpleRL-Zero (RL from the base)": "ppo/final"},
}


def arm_tables(run: Path) -> str:
    out = []
    for title, rows in ARM_TABLES.items():
        out += [f"\n[demo] {title}: held-out, greedy", "",
                "| model | accuracy | boxed | reflection | mean length |", "|---|---|---|---|---|"]
        for name, label in rows.items():
            s = sample_stats(run / "eval_arms" / label / "synth.jsonl")
            out.append(f"| {name} | {s['acc']:.1f} | {s['boxed']:.0f}% | {s['reflection']:.0f}% | "
                       f"{s['length']:.1f} |")
    return "\n".join(out)


def plot_arms(run: Path) -> Path:
    """Both RL runs' sampled rollouts against step, side by side: mean length and reflection share."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, folder in (("SimpleRL-Zero (from the base)", "ppo"),
                         ("SimpleRL (from the warm-up)", "simplerl")):
        recs = [json.loads(line) for line in (run / folder / "metrics.jsonl").read_text().splitlines()]
        recs = [r for r in recs if "response_length" in r]
        axes[0].plot([r["step"] for r in recs], [r["response_length"] for r in recs], label=name)
        axes[1].plot([r["step"] for r in recs], [100 * r["reflection_rate"] for r in recs], label=name)
    axes[0].set(xlabel="RL step", ylabel="tokens", title="mean sampled response length")
    axes[1].set(xlabel="RL step", ylabel="%", title="responses with a reflection word")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run / "arms_curves.png", dpi=110)
    plt.close(fig)
    return run / "arms_curves.png"


def level_table(run: Path, summary: dict) -> str:
    """Accuracy per difficulty level, format rate, reflection share and mean response length, before and after RL
    (from evaluate.py's greedy samples)."""
    from ppo import REFLECTION  # the words the rollout metrics count ("wait", "let me check", "verify", ...)
    levels = [json.loads(line)["level"] for line in (run / "eval_data/synth/test.jsonl").read_text().splitlines()]
    labels = list(summary["results"])
    rows = {"base": labels[0], "SimpleRL-Zero (PPO)": labels[-1]}
    head = "| model | " + " | ".join(f"Level {lv}" for lv in sorted(set(levels))) + \
           " | all | boxed | reflection | mean length |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, label in rows.items():
        by_level, boxed, reflect, lengths = defaultdict(list), [], [], []
        for line in (run / "eval" / label / "synth.jsonl").read_text().splitlines():
            s = json.loads(line)
            by_level[levels[s["idx"]]].append(bool(s["correct"]))  # idx: the row's index in the test file
            boxed.append("boxed" in s["response"])
            reflect.append(bool(REFLECTION.search(s["response"])))
            lengths.append(s["length"])
        every = [c for v in by_level.values() for c in v]
        cells = [f"{100 * sum(v) / len(v):.1f}" for _, v in sorted(by_level.items())]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * sum(every) / len(every):.1f} | "
                     f"{100 * sum(boxed) / len(boxed):.0f}% | {100 * sum(reflect) / len(reflect):.0f}% | "
                     f"{sum(lengths) / len(lengths):.1f} |")
    return "\n".join(lines)


def rollout_arc(run: Path, k: int = 3) -> dict:
    """The sampled rollouts' story (ppo/metrics.jsonl), each point a mean over k consecutive RL steps: mean response
    length at the start, its minimum and at the end; the share of responses with a reflection word, start and end."""
    recs = [json.loads(line) for line in (run / "ppo/metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "response_length" in r]
    smooth = lambda key: [sum(r[key] for r in recs[i:i + k]) / k for i in range(len(recs) - k + 1)]  # noqa: E731
    length, reflection = smooth("response_length"), smooth("reflection_rate")
    low = min(range(len(length)), key=length.__getitem__)
    return {"length_start": length[0], "length_min": length[low], "length_min_step": recs[low + k // 2]["step"],
            "length_end": length[-1], "reflection_start": reflection[0], "reflection_end": reflection[-1],
            "steps": recs[-1]["step"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", help="relative to the current directory (default: runs/demo, with --quick "
                   "runs/demo-quick)")
    p.add_argument("--fresh", action="store_true", help="delete the demo's files in the run directory and start over")
    p.add_argument("--quick", action="store_true", help="a shortened study (CI): fewer steps")
    p.add_argument("--zero-only", action="store_true",
                   help="only the SimpleRL-Zero study (its four steps), not the blog's other arms (SFT on the "
                   "reference solutions, a distilled long-CoT warm-up, RL from it) and their two tables")
    p.add_argument("--simplerl", action="store_true",
                   help="accepted for older command lines: the other arms now run by default")
    args = p.parse_args(argv)
    default = "runs/demo-quick" if args.quick else "runs/demo"
    run = prepare_run_dir(args.run_dir or default, args.fresh, args.quick)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwinds into run_in_own_group
    t0 = time.time()
    for name, cmd in steps(run, args.quick):
        run_step(name, cmd if cmd is not None else eval_command(run), run, fresh=False)
    summary = json.loads((run / "eval/summary.json").read_text())
    labels = list(summary["results"])
    before, after = summary["results"][labels[0]]["avg"], summary["results"][labels[-1]]["avg"]
    print("\n[demo] held-out accuracy on the synthetic test set (greedy, exact match after \\boxed{}):\n")
    print(summary["table"])
    print()
    print(level_table(run, summary))
    arc = rollout_arc(run)
    print(f"\n[demo] sampled rollouts during PPO (means over 3 RL steps): response length {arc['length_start']:.1f} "
          f"-> minimum {arc['length_min']:.1f} (step {arc['length_min_step']}) -> {arc['length_end']:.1f} tokens at "
          f"step {arc['steps']}; responses with a reflection word (\"let me check\", \"wait\") "
          f"{100 * arc['reflection_start']:.0f}% -> {100 * arc['reflection_end']:.0f}%")
    total = sum(json.loads((run / f"{name}.done").read_text())["seconds"] for name in STEP_NAMES)
    print(f"\n[demo] base {before:.1f}% -> PPO {after:.1f}% ({after - before:+.1f} points); the four steps took "
          f"{total:.0f} s ({time.time() - t0:.0f} s this run)")
    print(f"[demo] training dynamics:        {run / 'ppo/curves.png'}")
    print(f"[demo] held-out accuracy vs step: {run / 'eval/accuracy_vs_step.png'}")
    if not args.zero_only:
        for name, cmd in simplerl_steps(run, args.quick):
            run_step(name, cmd if cmd is not None else teacher_command(run, args.quick), run, fresh=False)
        print(arm_tables(run))
        distilled = json.loads((run / "distill/distill.json").read_text())
        print(f"\n[demo] distilled warm-up data: {distilled['rows']} rows from {distilled['responses']} "
              f"teacher responses (pass rate {100 * distilled['pass_rate']:.1f}%, mean "
              f"{distilled['response_tokens']['mean']:.1f} tokens); arms' curves: {plot_arms(run)}")
        seconds = {n: json.loads((run / f"{n}.done").read_text())["seconds"] for n in STEP_NAMES + ARM_NAMES}
        print("[demo] seconds per step: " + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()) +
              f"; {sum(seconds.values()):.0f} s in all ({time.time() - t0:.0f} s this run)")
    return {"before": before, "after": after, "run": str(run), **arc}


if __name__ == "__main__":
    main()
