# OpenBao with its integrated (raft) storage, for `make bench`: one node on
# loopback, data in a throwaway directory. Placeholders are filled in by
# tessera-bench (crates/tessera-bench/src/openbao.rs). Raft persists every
# write to its log with fsync, which is what our Redis with AOF is compared with.
storage "raft" {
  path    = "{{DATA}}"
  node_id = "bench"
}

listener "tcp" {
  address     = "127.0.0.1:{{PORT}}"
  tls_disable = true
}

api_addr      = "http://127.0.0.1:{{PORT}}"
cluster_addr  = "http://127.0.0.1:{{CLUSTER_PORT}}"
disable_mlock = true
ui            = false
log_level     = "warn"
