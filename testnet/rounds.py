#!/usr/bin/env python3
"""Format the JSON round reports that fedmesh nodes print on standard output.

  rounds.py table    rows of round, accuracy, loss, participants, dropouts, and with groups the
                     revealed groups (! = flagged), skipped groups and evictions (stdin: JSON lines)
  rounds.py summary  one line about the last round (stdin: JSON lines)
  rounds.py head     the head of an `audit verify --json` result, or FAILED (stdin: one object)
"""
import json
import sys


def reports():
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("event") == "round":
                yield r


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "table"
    if what == "table":
        for r in reports():
            line = "{:<6} {:<9.4f} {:<8.4f} {:<14} {}".format(
                r["round"], r["accuracy"], r["loss"], str(r["participants"]), r["dropouts"])
            groups = r.get("groups")
            if groups:
                # Revealed groups (contributors; ! = flagged by the rule's scores), then skipped.
                shown = ["{}{}".format(g["contributors"], "!" if g["flagged"] else "")
                         for g in groups["revealed"]]
                line += "  groups " + " ".join(shown)
                if groups["skipped"]:
                    line += " skipped " + str([groups["drawn"][i] for i in groups["skipped"]])
            if r.get("evicted"):
                line += "  evicted " + str(r["evicted"])
            print(line)
    elif what == "summary":
        last = None
        for r in reports():
            last = r
        if last is None:
            print("no round yet")
        else:
            print("round {} accuracy {:.4f} head {}".format(last["round"], last["accuracy"], last["head"][:16]))
    elif what == "head":
        d = json.load(sys.stdin)
        print(d["head"] if d.get("ok") else "FAILED")
    else:
        sys.exit("unknown command: " + what)


if __name__ == "__main__":
    main()
