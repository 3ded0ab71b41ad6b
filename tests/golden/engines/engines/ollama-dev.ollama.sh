#!/bin/sh
# Ollama replica of deployment 'ollama-dev' (rendered by gpufleet; do not edit): start the
# server, create the served model from the Modelfile, then wait on the server (the container's life).
set -eu
/bin/ollama serve &
server=$!
trap 'kill -TERM "$server"' TERM INT
until /bin/ollama list >/dev/null 2>&1; do kill -0 "$server"; sleep 1; done
/bin/ollama pull hf.co/bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M
/bin/ollama create llama-3.1-8b-instruct-ollama -f /etc/gpufleet/engines/ollama-dev.Modelfile
wait "$server"
