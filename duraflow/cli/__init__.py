"""The ``duraflow`` command: serve a data directory on a Ray cluster, and thin client commands.

    duraflow serve --data-dir DIR --app mypackage.workflows [--partitions P] [--address auto]
                   [--retention D] [--warehouse s3://bucket/prefix] [--s3-endpoint URL] ...
    duraflow status | stop | worker --queue Q [--size N]
    duraflow list [--status S] [--type T] | describe ID | result ID [--timeout S]
    duraflow signal ID NAME [JSON] | update ID NAME [JSON] | cancel ID | terminate ID [--reason R]
    duraflow start TYPE [ARGS_JSON] [--id ID] | query ID NAME [ARGS_JSON]
    duraflow pause ID | unpause ID | reset ID [--to last_failure|EVENT_ID] [--reason R]
    duraflow sql "SELECT ..." [--json] [--data-dir DIR]
    duraflow relocate-archive --data-dir DIR

Every command takes ``--address`` (default ``auto``: the cluster this node belongs to) and
``--namespace`` (default ``duraflow``). The work is done by :mod:`duraflow.runtime` and the
:class:`~duraflow.Client`; this package only parses arguments and prints.

One module per group of verbs, each declaring its verbs' arguments next to the code that runs
them: ``deploy`` (serve, status, stop, relocate-archive), ``runs`` (list, describe, signal,
update, cancel, terminate, result), ``control`` (start, query, pause, unpause, reset),
``workers`` (worker), ``sql``.
``main`` builds the parser from them, runs the chosen verb and maps its outcome to an exit
code; ``args`` holds the options every verb takes and the value parsers; ``output`` the exit
codes and JSON printing the verbs share. A new verb goes in the module of its group (or a new
one, added to ``main``).
"""
