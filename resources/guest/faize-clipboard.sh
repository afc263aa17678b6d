# faize: what the clipboard shims share. The agent keeps the host's clipboard, as of the user's
# last Ctrl+V, in /run/faize/clipboard: `types` (a MIME type per line) and the data of line N
# in the file N. Sourced by xclip, xsel, wl-paste and wl-copy.
clip_dir=/run/faize/clipboard

# After a Ctrl+V the keystroke comes first and the content right behind it: wait for it (while
# the agent's marker exists), so the previous content is never served.
clip_wait() {
  local i=0
  while [ -e /run/faize/clipboard.pending ]; do
    if [ $i -ge 1000 ]; then echo "faize: the clipboard did not arrive from the host within 20 s" >&2; return 1; fi
    sleep 0.02
    i=$((i + 1))
  done
}

# The canonical name of a type: the names text goes by are all text/plain.
clip_norm() {
  case "$1" in
    ""|UTF8_STRING|STRING|TEXT|text/plain|text/plain\;charset=utf-8|text/plain\;charset=UTF-8) echo text/plain ;;
    *) echo "$1" ;;
  esac
}

# Lists the types on offer (text under its usual names too); fails when there is nothing.
clip_types() {
  clip_wait || return 1
  [ -s "$clip_dir/types" ] || return 1
  while IFS= read -r t; do
    if [ "$t" = text/plain ]; then
      printf 'UTF8_STRING\ntext/plain;charset=utf-8\ntext/plain\n'
    else
      printf '%s\n' "$t"
    fi
  done < "$clip_dir/types"
}

# Writes the content of one type (default: text) to stdout; fails when it is not on offer.
clip_read() {
  local want n dir
  want=$(clip_norm "$1")
  clip_wait || return 1
  # One generation throughout, even if another Ctrl+V swaps in the next meanwhile.
  dir=$(readlink -f "$clip_dir") && [ -f "$dir/types" ] || return 1
  n=$(grep -nxF -- "$want" "$dir/types" | head -n1 | cut -d: -f1)
  [ -n "$n" ] || return 1
  cat -- "$dir/$((n - 1))"
}

# Hands a copy (from FILE, or stdin) to the host, which takes it only if the user allowed it.
clip_copy() {
  local type file tmp len reply
  type=$(clip_norm "$1") file=$2
  tmp=$(mktemp) || return 1
  if [ -n "$file" ]; then cat -- "$file" > "$tmp" || { rm -f "$tmp"; return 1; }; else cat > "$tmp"; fi
  len=$(stat -c %s "$tmp")
  if ! exec 3<>/dev/tcp/127.0.0.1/15002; then rm -f "$tmp"; echo "cannot reach the faize agent" >&2; return 1; fi
  { printf 'copy %s %s\n' "$type" "$len"; cat "$tmp"; } >&3
  rm -f "$tmp"
  read -r reply <&3
  exec 3>&-
  [ "$reply" = ok ] || { echo "$reply" >&2; return 1; }
}
