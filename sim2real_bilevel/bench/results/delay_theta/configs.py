"""The problem files of ../delay_theta/ and ../delay_theta_realtime/, from config/pendulum_urdf.yaml:
``nodelay.yaml`` (the file as shipped, the URDF path made absolute), ``delay.yaml`` (plus a learnable actuation
delay entry, nominal 5 ms, bounds [1, 100] ms) and ``fixeddelay.yaml`` (a fixed 20 ms delay entry,
the loop's measured median sensing-to-command delay).  The stand-in's own actuation delay is 40 ms.

    python sim2real_bilevel/bench/results/delay_theta/configs.py OUT_DIR     (fixeddelay.yaml: ../delay_theta_realtime/)
"""
import sys
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parents[3]
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
document = yaml.safe_load((PACKAGE / 'config' / 'pendulum_urdf.yaml').read_text())
document['robot']['urdf'] = str(PACKAGE / 'urdf' / 'pendulum.urdf')
(out / 'nodelay.yaml').write_text(yaml.safe_dump(document))
document['simulator']['parameters']['delay'] = {'value': 0.005, 'learn': True, 'bounds': [0.001, 0.1]}
(out / 'delay.yaml').write_text(yaml.safe_dump(document))
document['simulator']['parameters']['delay'] = {'value': 0.02, 'learn': False}
(out / 'fixeddelay.yaml').write_text(yaml.safe_dump(document))
