"""``python -m algornn.layers``: list the sequence mixers, one line each (registry name, class, description)."""

from algornn.layers._registry import describe_mixers


def main() -> None:
    rows = describe_mixers()
    w_name = max(len(r[0]) for r in rows)
    w_cls = max(len(r[1]) for r in rows)
    print(f"{'name':<{w_name}}  {'class':<{w_cls}}  description")
    for name, cls, doc in rows:
        print(f"{name:<{w_name}}  {cls:<{w_cls}}  {doc}")
    print(
        "\nUse a name as SequenceModel(mixer=NAME, mixer_options={...}); a class's options: help(algornn.layers.CLASS)."
    )


if __name__ == "__main__":
    main()
