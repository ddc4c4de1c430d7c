# benches/dhat-broker.sh — sourced by benches/alloc.sh and benches/idle-heap.sh: installs
# valgrind when missing, and `dhat_start BINARY DIR` starts the broker under valgrind's DHAT
# with its files in DIR, on a free loopback port, sets PORT and PID and waits until it listens.

command -v valgrind >/dev/null || {
  echo "installing valgrind"
  apt-get install -y valgrind >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y valgrind >/dev/null; }
}

dhat_start() {
  local bin=$1 dir=$2
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf '[listeners.tcp]\nbind = "127.0.0.1:%s"\n[http]\nbind = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n' \
    "$PORT" "$dir" >"$dir/c.toml"
  valgrind --tool=dhat --dhat-out-file="$dir/dhat.json" "$bin" serve --config "$dir/c.toml" >"$dir/log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.2; done
  echo "the broker did not listen on $PORT within 60 s" >&2
  return 1
}
