"""Prose for bench/spec_daemon.py --text (python3 stdlib only, so that tools without the
bench's gRPC dependencies, e.g. tools/gen_draft_goldens.py --copy, read the same prompts)."""


# Prose written for this bench (no outside text): the copy-heavy passages. Two
# registers: narrative on one long line, and reference-manual prose wrapped at 80 columns (the
# shape of most text a small model is trained on: a model copies text like its own better).
PASSAGES = {
    "story": ("The lighthouse keeper wrote in the log every evening. He noted the wind, the height "
              "of the waves and the ships that passed. When the lamp failed he climbed the stairs "
              "with a candle and cleaned the glass by hand. In the spring the supply boat brought "
              "oil, flour and letters from the town, and he read them slowly by the window."),
    "manual": ("The open() function returns a file object whose type depends on the mode. When the\n"
               "file is opened in text mode, the object reads and writes strings, and the encoding is\n"
               "taken from the locale unless it is given. In binary mode the object reads and writes\n"
               "bytes, and no translation of line endings is done. Close the file when you are done,\n"
               "or use it in a with statement so that it is closed for you."),
}


def copy_prompt(passage):
    """A copy-heavy prose prompt: the passage, a blank line, then its first third again, cut at
    a word boundary (so its tokens are the passage's own): a model that copies continues with
    the rest of the passage. tools/gen_draft_goldens.py --copy records the same prompts for
    tests/integration/test_hybrid_model.py."""
    return passage + "\n\n" + passage[:len(passage) // 3].rsplit(" ", 1)[0]


def heldout_passages():
    """The "copy-heldout" passages: bench/spec_heldout.json, from the documents the bundled
    models' training held out (tools/heldout_passages.py writes it)."""
    import json
    import os
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec_heldout.json")) as f:
        return [p["text"] for p in json.load(f)["passages"]]
