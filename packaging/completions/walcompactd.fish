# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_walcompactd_global_optspecs
    string join \n h/help V/version
end

function __fish_walcompactd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_walcompactd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_walcompactd_using_subcommand
    set -l cmd (__fish_walcompactd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c walcompactd -n "__fish_walcompactd_needs_command" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -s V -l version -d 'Print version'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "status" -d 'Figures about a WAL: size, lines, entries, transactions, reclaimable bytes; when the WAL is in the policy, also the daemon\'s state, backups, decision and alerts'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "compact" -d 'Backup → compact → verify → swap; rolls back on failure'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "verify" -d 'Integrity check: parse every line, print the replay digest; with --against, compare'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "backup" -d 'Back up the WAL now (hard link when possible, else a durable copy)'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "restore" -d 'Replace the WAL with a backup, after backing up the current WAL; or, with --from-archive, append an archive\'s expired lines to the (stopped) WAL'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "prune-backups" -d 'Delete backups older than --keep-days, always keeping the newest --keep-last, and never one still waiting for its off-host copy (the WAL\'s [wal.offsite] queue)'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "run" -d 'Run the daemon: watch the policy\'s WALs and compact them when a trigger holds'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "check-policy" -d 'Validate a policy and print the effective policy; exit 2 listing every error'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "offsite" -d 'Off-host copies of backups and archives (the WAL\'s [wal.offsite] in the policy)'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "recover" -d 'Finish or undo a compaction interrupted by a crash, and remove leftover temp files'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "man" -d 'Print the manual page walcompactd(1) (`walcompactd man | man -l -`); with --dir, write it and one page per subcommand there (walcompactd-status.1, ...), as the package ships'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL (installed by the package for bash, zsh and fish), e.g. `walcompactd completions bash > /etc/bash_completion.d/walcompactd`'
complete -c walcompactd -n "__fish_walcompactd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand status" -l policy -d 'Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand status" -l expire-after -d 'Expire committed and aborted transactions whose last COMMIT/ABORT `timestamp` is older than SECS seconds (at least 1)' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand status" -l expire-in-flight-after -d 'Expire in-flight transactions whose last PREPARE `timestamp` is older than SECS seconds (0 = never); may be used without --expire-after' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand status" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l backup-dir -d 'Where the backup goes (default: the WAL\'s directory; the real file\'s for a symlink)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l mode -d 'How writers are kept out: offline (none runs; a kernel lease makes the run give up if one opens the WAL), lease (writers that open the WAL per append and take no lock, like the Diotec360 application, keep appending) or online (writers that follow docs/PROTOCOL.md keep appending)' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l lock-timeout-ms -d 'Online and lease: give up (exit 5, nothing changed) if writers hold the lock (or keep the WAL open) this long (default 2000)' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l corrupt-lines -d 'Corrupt complete lines: keep them in place, move them to <stem>_quarantine<ext> beside the backups, or refuse the WAL (exit 3)' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l expire-after -d 'Expire committed and aborted transactions whose last COMMIT/ABORT `timestamp` is older than SECS seconds (at least 1)' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l expire-in-flight-after -d 'Expire in-flight transactions whose last PREPARE `timestamp` is older than SECS seconds (0 = never); may be used without --expire-after' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l archive-dir -d 'Where the archive of expired transactions goes (default: the backup directory)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l dry-run -d 'Report what each rule would remove; change nothing'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l online -d 'The same as --mode online'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -l allow-hard-links -d 'Compact even if the WAL has other hard links (they keep naming the old file)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand compact" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand verify" -l against -d 'A backup (or any WAL) that must replay to the same state' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand verify" -l archive -d 'An archive of a retention run after BACKUP was taken (repeatable, any order): the WAL with the archives\' lines merged in, in the backup\'s order, must replay to the backup\'s state (lines appended to the WAL since count on both sides), and every archive line must be in the backup; else exit 1' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand verify" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand verify" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand backup" -l backup-dir -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand backup" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand backup" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l policy -d 'With an s3:// BACKUP or ARCHIVE: the policy whose [wal.offsite] gives the endpoint (default: /etc/walcompactd/policy.toml if it exists, else the environment\'s)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l from-archive -d 'Append this archive\'s lines, in order, to the WAL instead, after backing up the WAL (a copy). Offline only: refused (exit 4) if any process has the WAL open, or if the WAL ends without a newline (a torn tail)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l backup-dir -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l mode -d 'How writers are kept out while the backup is put back: offline (none runs), lease (a kernel lease holds writers back for the swap; late lines are kept) or online (the writers\' lock of docs/PROTOCOL.md is held for the rename)' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l lock-timeout-ms -d 'Online and lease: give up (exit 5, nothing changed) if writers hold the lock (or keep the WAL open) this long' -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l print -d 'With --from-archive: write the archive\'s lines to stdout, exactly; change nothing'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand prune-backups" -l keep-days -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand prune-backups" -l keep-last -r
complete -c walcompactd -n "__fish_walcompactd_using_subcommand prune-backups" -l backup-dir -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand prune-backups" -l policy -d 'Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand prune-backups" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand prune-backups" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand run" -l policy -d 'Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand check-policy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and not __fish_seen_subcommand_from list push help" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and not __fish_seen_subcommand_from list push help" -f -a "list" -d 'What is where: local backups and archives with their copy\'s status, and the objects on the server with sizes and digests'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and not __fish_seen_subcommand_from list push help" -f -a "push" -d 'Upload every pending backup and archive now, whatever its retry backoff; exit 4 if any upload failed (the file stays pending)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and not __fish_seen_subcommand_from list push help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from list" -l policy -d 'Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from list" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from push" -l policy -d 'Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in)' -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from push" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from push" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from help" -f -a "list" -d 'What is where: local backups and archives with their copy\'s status, and the objects on the server with sizes and digests'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from help" -f -a "push" -d 'Upload every pending backup and archive now, whatever its retry backoff; exit 4 if any upload failed (the file stays pending)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand offsite; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand recover" -l json
complete -c walcompactd -n "__fish_walcompactd_using_subcommand recover" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand man" -l dir -r -F
complete -c walcompactd -n "__fish_walcompactd_using_subcommand man" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand completions" -s h -l help -d 'Print help'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "status" -d 'Figures about a WAL: size, lines, entries, transactions, reclaimable bytes; when the WAL is in the policy, also the daemon\'s state, backups, decision and alerts'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "compact" -d 'Backup → compact → verify → swap; rolls back on failure'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "verify" -d 'Integrity check: parse every line, print the replay digest; with --against, compare'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "backup" -d 'Back up the WAL now (hard link when possible, else a durable copy)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "restore" -d 'Replace the WAL with a backup, after backing up the current WAL; or, with --from-archive, append an archive\'s expired lines to the (stopped) WAL'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "prune-backups" -d 'Delete backups older than --keep-days, always keeping the newest --keep-last, and never one still waiting for its off-host copy (the WAL\'s [wal.offsite] queue)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "run" -d 'Run the daemon: watch the policy\'s WALs and compact them when a trigger holds'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "check-policy" -d 'Validate a policy and print the effective policy; exit 2 listing every error'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "offsite" -d 'Off-host copies of backups and archives (the WAL\'s [wal.offsite] in the policy)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "recover" -d 'Finish or undo a compaction interrupted by a crash, and remove leftover temp files'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "man" -d 'Print the manual page walcompactd(1) (`walcompactd man | man -l -`); with --dir, write it and one page per subcommand there (walcompactd-status.1, ...), as the package ships'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "completions" -d 'Print the shell completion script for SHELL (installed by the package for bash, zsh and fish), e.g. `walcompactd completions bash > /etc/bash_completion.d/walcompactd`'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and not __fish_seen_subcommand_from status compact verify backup restore prune-backups run check-policy offsite recover man completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and __fish_seen_subcommand_from offsite" -f -a "list" -d 'What is where: local backups and archives with their copy\'s status, and the objects on the server with sizes and digests'
complete -c walcompactd -n "__fish_walcompactd_using_subcommand help; and __fish_seen_subcommand_from offsite" -f -a "push" -d 'Upload every pending backup and archive now, whatever its retry backoff; exit 4 if any upload failed (the file stays pending)'
