"""sim2real_bilevel: bi-level RL that tunes a simulator for the real-world return of its policy."""
__version__ = '0.1.0'
