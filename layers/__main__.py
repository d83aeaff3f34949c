"""``python -m algornn.layers``: list the sequence mixers, then the baselines, one line each (registry name, class,
description)."""

from algornn.layers._registry import BASELINES, describe_mixers


def main() -> None:
    rows, baselines = describe_mixers(), describe_mixers(BASELINES)
    w_name = max(len(r[0]) for r in rows + baselines)
    w_cls = max(len(r[1]) for r in rows + baselines)
    print(f"{'name':<{w_name}}  {'class':<{w_cls}}  description")
    for name, cls, doc in rows:
        print(f"{name:<{w_name}}  {cls:<{w_cls}}  {doc}")
    print("\nbaselines (not recurrences):")
    for name, cls, doc in baselines:
        print(f"{name:<{w_name}}  {cls:<{w_cls}}  {doc}")
    print(
        "\nUse a name as SequenceModel(mixer=NAME, mixer_options={...}); a class's options: help(algornn.layers.CLASS)."
    )


if __name__ == "__main__":
    main()
