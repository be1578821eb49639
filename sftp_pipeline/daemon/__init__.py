"""The daemon (``sftp-pipeline run``): cron schedules, watched drop folders and the embedded server in one process.

* :mod:`.main` — start-up recovery, the instance lock, running each job once at a time;
* :mod:`.scheduler` — cron triggers with catch-up and DST-safe nightly runs (APScheduler 3.x underneath);
* :mod:`.watcher` — watched drop folders (watchdog) with a periodic rescan.
"""
