"""Running on Ray on this machine or a cluster: joining or starting a head with token auth, the
guardian that stops a private head with its driver, the allocator setting, logging and the entry
scripts' shared behaviour."""
