"""
configurator.py: settings overrides for every stage script, in the spirit of nanoGPT's configurator.

    python sft.py config/sft_paper.py --lr=2e-5 --out_dir=out/sft_lr2e-5

A stage script keeps its settings as plain module globals and calls `configure(globals())` right after them.
Each positional argument is a Python config file executed over those globals; each `--key=value` replaces
one setting, the value parsed as a Python literal when it is one (numbers, True/False, None, lists) and
kept as a string otherwise. A setting that does not exist, or a value of a different type, is an error:
a typo must not silently train with the default.
"""

import ast
import sys


def configure(settings, argv=None):
    argv = sys.argv[1:] if argv is None else argv
    known = {k for k, v in settings.items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None), list, tuple))}
    for arg in argv:
        if not arg.startswith("--"):
            with open(arg) as f:
                exec(f.read(), settings)
            continue
        key, sep, value = arg[2:].partition("=")
        if not sep:
            key, value = key, "True"  # `--resume` alone means --resume=True
        if key not in known:
            raise SystemExit(f"unknown setting --{key} (settings: {', '.join(sorted(known))})")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        old = settings[key]
        if old is not None and parsed is not None and not isinstance(parsed, type(old)):
            if isinstance(old, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
                parsed = float(parsed)
            elif isinstance(old, str):
                parsed = value
            else:
                raise SystemExit(f"--{key}={value}: expected {type(old).__name__}, got {type(parsed).__name__}")
        settings[key] = parsed
    return {k: settings[k] for k in sorted(known)}
