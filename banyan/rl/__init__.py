"""banyan.rl: the RL lab (needs the `rl` extra: torchrl, tensordict, gymnasium).

Verbs: `banyan rl train` (train.py: PPO in ppo.py, DQN in dqn.py), `banyan rl compare` (compare.py),
`banyan rl check-env` (check_env.py) and `banyan bench rl` (bench.py). Policies live in policies.py,
environments (including `banyan/CartPoleNoVel-v0`) in envs.py. See docs/rl.md.
"""
