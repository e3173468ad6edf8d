"""Many files on Ray, resumable: the shared runner (``runner``, ``cluster``, ``journal``, ``listing``,
``expr``) and its two commands, ``python -m lipsync batch`` (``lip_sync``) and ``python -m syncnet batch``
(``scoring``). It sits above the engine and the evaluator; nothing below imports it but their command
lines' dispatch to these two commands."""
