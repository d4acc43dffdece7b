"""Generated problem files with a built-in objective mismatch (``sim2real-bilevel generate``).

``generate(kind, seed, **options)`` draws a problem of ``kind`` ('tabular' or 'lqr') from the
seed and returns it as the text of a commented problem file in the shipped format, without
``inner:``/``outer:`` sections (default settings, as a user would write it).  Generation is by
rejection: a candidate is drawn, written, loaded through ``load_problem`` (the validation of a
hand-written file) and its properties are checked exactly on the loaded problem:

- the nominal simulator's policy and the system-identified simulator's policy (maximum
  likelihood of the learnable dynamics entries on plentiful real data of the nominal policy,
  projected onto the bounds as the sysid baseline does, and refitted once after deploying
  its policy) reach at most ``MAX_BASELINE`` normalised real return;
- a witness theta inside the bounds reaches at least ``MIN_REACHABLE`` (the witness is written
  into the file's comments, so anyone can check it with ``inner_solve``);
otherwise the candidate is redrawn from a seed derived from (kind, seed, draw number).  The
output is a function of (kind, seed, options) only.  Options not given are drawn from the seed
first, in a fixed order, so ``--seed 3 --states 5`` keeps seed 3's other choices.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ('tabular', 'lqr')
MAX_BASELINE = 0.9          # nominal and sysid normalised real return at most this
MIN_REACHABLE = 0.97        # some theta inside the bounds reaches at least this
MAX_DRAWS = 200             # candidates tried before giving up
HORIZON_RANGE = (5, 500)    # --horizon N

# allowed ranges of the size options per kind (inclusive); sizes not given are drawn uniformly
RANGES = {
    'tabular': {'states': (3, 10), 'actions': (2, 4)},
    'lqr': {'states': (2, 6), 'inputs': (1, 3)},
}
CHOICES = {
    'tabular': {'learn': ('logits', 'rewards', 'both')},
    'lqr': {'open_loop': ('stable', 'unstable')},
}
KIND_TAGS = {'tabular': 1, 'lqr': 2}     # first word of every seed sequence


class GeneratorOptionError(ValueError):
    """A bad option value; ``str(err)`` names the value and what is allowed."""


class GenerationFailed(RuntimeError):
    """No candidate passed the checks within ``MAX_DRAWS`` draws."""


@dataclass
class Generated:
    """A generated problem: the file text and what was measured (for reports and tests)."""
    kind: str
    seed: int
    text: str
    draws: int                   # candidates drawn (1 = the first was accepted)
    seconds: float
    info: dict = field(default_factory=dict)


def derived_rng(kind: str, seed: int, *words: int) -> np.random.Generator:
    """The generator of (kind, seed, words...): independent streams for the option draws (no
    words) and for each candidate (its draw number)."""
    return np.random.default_rng([KIND_TAGS[kind], int(seed), *map(int, words)])


def check_options(kind: str, options: dict) -> dict:
    """Validate the options given for ``kind`` (None = not given); raises
    ``GeneratorOptionError`` naming the bad value and the allowed range."""
    if kind not in KINDS:
        raise GeneratorOptionError(f'unknown kind {kind!r}: expected one of {list(KINDS)}')
    ranges, choices = RANGES[kind], CHOICES[kind]
    allowed = set(ranges) | set(choices) | {'horizon'}
    checked = {}
    for name, value in options.items():
        if value is None:
            continue
        flag = '--' + name.replace('_', '-')
        if name not in allowed:
            raise GeneratorOptionError(f'{flag} {value}: not an option of {kind} problems '
                                       f'(they take {", ".join(sorted("--" + a.replace("_", "-") for a in allowed))})')
        if name in ranges:
            low, high = ranges[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise GeneratorOptionError(f'{flag} {value}: expected an integer in {low}..{high} for {kind} problems')
        elif name in choices:
            if value not in choices[name]:
                raise GeneratorOptionError(f'{flag} {value}: expected one of {", ".join(choices[name])}')
        elif name == 'horizon':
            value = _horizon(value)
        checked[name] = value
    if kind == 'lqr' and 'inputs' in checked and 'states' in checked and checked['inputs'] > checked['states']:
        raise GeneratorOptionError(f'--inputs {checked["inputs"]}: expected an integer in 1..{checked["states"]} '
                                   f'(at most --states {checked["states"]})')
    return checked


def _horizon(value):
    """--horizon N (an integer in HORIZON_RANGE) or 'none'."""
    if value == 'none':
        return value
    low, high = HORIZON_RANGE
    parsed = value
    if isinstance(value, str):
        try:
            parsed = int(value)
        except ValueError:
            parsed = None
    if isinstance(parsed, bool) or not isinstance(parsed, int) or not low <= parsed <= high:
        raise GeneratorOptionError(f'--horizon {value}: expected an integer in {low}..{high} or none '
                                   f'(no horizon field: the loader\'s default, 50 steps)')
    return parsed


def generate(kind: str, seed: int, **options) -> Generated:
    """A problem of ``kind`` drawn from ``seed`` (see the module docstring).  ``options``:
    tabular: states, actions, learn, horizon; lqr: states, inputs, open_loop, horizon
    (None or absent = drawn from the seed; horizon may be 'none')."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GeneratorOptionError(f'--seed {seed}: expected an integer >= 0')
    checked = check_options(kind, options)
    started = time.perf_counter()
    if kind == 'tabular':
        from .tabular import generate_tabular as build
    else:
        from .lqr import generate_lqr as build
    text, draws, info = build(seed, checked)
    return Generated(kind=kind, seed=seed, text=text, draws=draws, seconds=time.perf_counter() - started,
                     info=info)


def load_text(text: str):
    """Load a problem file's text exactly as ``load_problem`` loads a file."""
    from ..problems import load_problem

    with tempfile.TemporaryDirectory(prefix='sim2real-generate-') as folder:
        path = Path(folder) / 'candidate.yaml'
        path.write_text(text)
        return load_problem(path)


def iterated_sysid(problem, phi: np.ndarray, rng: np.random.Generator, transitions: int, rounds: int = 2,
                   keep_going=lambda phi: True) -> list[np.ndarray]:
    """The policies of the sysid baseline's first ``rounds`` iterations with plentiful data:
    deploy ``phi`` for ``transitions`` real transitions, fit the learnable dynamics entries by
    maximum likelihood on all real data so far, project onto the bounds, solve the inner
    problem exactly; repeat from the fitted policy while ``keep_going(phi)``."""
    theta0 = problem.theta0()
    lower, upper = problem.theta_bounds()
    episodes = math.ceil(transitions / problem.real_horizon)
    batches, policies = [], []
    for _ in range(rounds):
        batches.append(problem.sample_real(phi, episodes, rng))
        theta = np.clip(problem.system_identification(batches, theta0), lower, upper)
        phi = problem.inner_solve(theta, phi).phi
        policies.append(phi)
        if not keep_going(phi):
            break
    return policies


# --- writing -----------------------------------------------------------------------------------
def number(value: float, digits: int = 4) -> str:
    """A float rounded to ``digits`` decimals as YAML (always with a decimal point)."""
    value = round(float(value), digits)
    if value == 0.0:
        value = 0.0               # no '-0.0'
    return repr(value)


def row(values, digits: int = 4) -> str:
    return '[' + ', '.join(number(v, digits) for v in np.ravel(values)) + ']'


def matrix(values, digits: int = 4) -> str:
    """A 2-D array in flow style on one line."""
    return '[' + ', '.join(row(r, digits) for r in np.asarray(values)) + ']'


def int_matrix(mask) -> str:
    return '[' + ', '.join('[' + ', '.join(str(int(v)) for v in r) + ']' for r in np.asarray(mask)) + ']'


def wrap_comment(text: str, width: int = 100, indent: str = '#   ') -> list[str]:
    """A long comment (e.g. a vector) wrapped over several ``#`` lines."""
    words, lines, line = text.split(' '), [], indent
    for word in words:
        if len(line) + len(word) + 1 > width and line.strip() != '#':
            lines.append(line.rstrip())
            line = indent
        line += word + ' '
    lines.append(line.rstrip())
    return lines


def command_line(kind: str, seed: int, options: dict) -> str:
    given = ' '.join(f'--{name.replace("_", "-")} {value}' for name, value in options.items())
    return f'sim2real-bilevel generate {kind} --seed {seed}' + (f' {given}' if given else '')


def rounded_inside(theta, lower, upper, digits: int) -> np.ndarray:
    """theta rounded to ``digits`` decimals, exactly as ``number`` writes it, and inside
    [lower, upper] after the rounding (entries the rounding pushes out move one unit in)."""
    unit = 10.0 ** -digits
    values = []
    for value, low, high in zip(np.ravel(theta), np.ravel(lower), np.ravel(upper)):
        value = float(number(min(max(value, low), high), digits))
        while value < low:
            value = float(number(value + unit, digits))
        while value > high:
            value = float(number(value - unit, digits))
        values.append(value)
    return np.array(values)


def header_opening(kind: str, seed: int, options: dict, sizes: str, horizon, always: str) -> list[str]:
    """The first comment lines of a generated file: how to regenerate it, the sizes and what
    was drawn from the seed."""
    drawn = [name.replace('_', '-') for name in (*RANGES[kind], *CHOICES[kind], 'horizon') if name not in options]
    episodes = f'{horizon} steps.' if horizon != 'none' else '50 steps (no horizon field: the default).'
    return [f'Generated by `{command_line(kind, seed, options)}`;',
            'the same command writes the same file.  No inner:/outer: sections: default settings,',
            f'those that depend on scale derived from this file (core/problems/{kind}/config.py).',
            '',
            f'Sizes: {sizes}, real episodes of {episodes}',
            f'Drawn from the seed: {", ".join(drawn) or "nothing (all given)"}; {always} always.']


def redraw_summary(draw: int, rejected: dict) -> str:
    reasons = ', '.join(f'{count} {why}' for why, count in rejected.items()) or 'none'
    return f'Accepted at draw {draw} (redraws: {reasons}).'


def round_probabilities(p: np.ndarray, digits: int = 2) -> np.ndarray:
    """Rows of probabilities rounded to ``digits`` decimals that still sum to 1 (the rounding
    error goes to each row's largest entry)."""
    p = np.round(np.asarray(p, dtype=np.float64), digits)
    flat = p.reshape(-1, p.shape[-1])
    for r in flat:
        top = int(np.argmax(r))
        r[top] = round(r[top] + round(1.0 - r.sum(), digits), digits)
    return flat.reshape(p.shape)


# --- command line --------------------------------------------------------------------------------
def add_generate_command(subparsers) -> None:
    """Register ``generate`` on the CLI's sub-command parsers."""
    parser = subparsers.add_parser(
        'generate', help='write a problem file with a built-in objective mismatch, drawn from a seed',
        description='Write a commented problem file (tabular or lqr) drawn from --seed, with a built-in '
                    'objective mismatch checked exactly at generation: the nominal and the system-identified '
                    f'simulators reach at most {MAX_BASELINE} normalised real return, a theta inside the bounds '
                    f'reaches at least {MIN_REACHABLE}.  Options not given are drawn from the seed.')
    parser.add_argument('kind', help=f'one of {", ".join(KINDS)}, or urdf: a URDF task (a random robot, a reaching '
                        'task and a hidden gap; no check at generation, --out required: the URDF is written beside it)')
    parser.add_argument('--seed', type=int, default=0, help='integer >= 0 (default 0)')
    parser.add_argument('--states', type=int, default=None,
                        help='states: tabular {}..{}, lqr {}..{} (default: drawn)'.format(
                            *RANGES['tabular']['states'], *RANGES['lqr']['states']))
    parser.add_argument('--actions', type=int, default=None,
                        help='tabular actions {}..{} (default: drawn)'.format(*RANGES['tabular']['actions']))
    parser.add_argument('--inputs', type=int, default=None,
                        help='lqr inputs {}..{}, at most --states (default: drawn)'.format(*RANGES['lqr']['inputs']))
    parser.add_argument('--learn', default=None,
                        help='tabular learnable entries: logits, rewards or both (default: drawn)')
    parser.add_argument('--open-loop', dest='open_loop', default=None,
                        help='lqr real system open-loop: stable or unstable (default: drawn)')
    parser.add_argument('--horizon', default=None,
                        help='real episode length {}..{}, or none to leave the field out (default: drawn)'.format(
                            *HORIZON_RANGE))
    parser.add_argument('--joints', type=int, default=None, help='urdf: controlled joints 1..3 (default: 1 or 2, drawn)')
    parser.add_argument('--out', default='-', help='output file, - for stdout (default)')
    parser.set_defaults(func=cmd_generate)


def _written(out: str, files: dict) -> bool:
    """Write path -> text; False (the error printed, naming --out) if one cannot be written."""
    try:
        for path, text in files.items():
            path.write_text(text)
    except OSError as err:
        print(f'error: --out {out}: cannot write it ({err.strerror})', file=sys.stderr)
        return False
    return True


def cmd_generate_urdf(args) -> int:
    """``generate urdf``: the task file at --out and its URDF beside it."""
    from .urdf_tasks import random_urdf_task
    given = [f'--{name.replace("_", "-")}' for name in ('states', 'actions', 'inputs', 'learn', 'open_loop', 'horizon')
             if getattr(args, name) is not None]
    if given:
        print(f'error: {" ".join(given)}: not an option of urdf tasks (they take --joints)', file=sys.stderr)
        return 2
    if args.out == '-':
        print('error: --out -: a urdf task is two files (the task and its URDF); give --out FILE.yaml', file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        task = random_urdf_task(args.seed, joints=args.joints)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if not _written(args.out, task.files(args.out)):
        return 2
    print(f'wrote {args.out} and {Path(args.out).parent / task.urdf_name} (urdf, seed {args.seed}, {task.info["joints"]} joint(s), '
          f'{time.perf_counter() - started:.2f} s)', file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    if args.kind == 'urdf':
        return cmd_generate_urdf(args)
    if args.joints is not None:
        print(f'error: --joints {args.joints}: an option of urdf tasks only', file=sys.stderr)
        return 2
    options = {'states': args.states, 'actions': args.actions, 'inputs': args.inputs, 'learn': args.learn,
               'open_loop': args.open_loop, 'horizon': args.horizon}
    try:
        result = generate(args.kind, args.seed, **options)
    except GeneratorOptionError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except GenerationFailed as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.out == '-':
        sys.stdout.write(result.text)
    else:
        if not _written(args.out, {Path(args.out): result.text}):
            return 2
        print(f'wrote {args.out} ({args.kind}, seed {args.seed}, {result.draws} draw(s), '
              f'{result.seconds:.2f} s)', file=sys.stderr)
    return 0
