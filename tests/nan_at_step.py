"""ppo.py with a NaN actor loss at one RL step: the fault injection of the NaN tests, kept out of ppo.py.

    python tests/nan_at_step.py STEP <ppo.py flags>

The STEP-th call of ppo.ppo_update in this process (0-based: on a fresh run, RL step STEP + 1) sees a
policy_loss that returns NaN; every other call sees the real one."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppo  # noqa: E402
import runtime  # noqa: E402


def main() -> None:
    at, calls = int(sys.argv[1]), [0]
    update, policy_loss = ppo.ppo_update, ppo.policy_loss

    def nan_policy_loss(*args, **kwargs):
        return policy_loss(*args, **kwargs) * float("nan")

    def ppo_update(*args, **kwargs):
        ppo.policy_loss = nan_policy_loss if calls[0] == at else policy_loss
        calls[0] += 1
        return update(*args, **kwargs)

    ppo.ppo_update = ppo_update
    cfg = ppo.parse_args(sys.argv[2:])
    with runtime.stage_errors(cfg.output_dir):
        ppo.main(cfg)
    runtime.end_process()


if __name__ == "__main__":
    main()
