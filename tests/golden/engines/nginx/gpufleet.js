// njs module of the load balancer of stack 'engines' (rendered by gpufleet; do not edit).
// Written for njs 0.7 (Debian bookworm's libnginx-mod-http-js): no async, no shared dictionaries.
import crypto from 'crypto';

// The `model` a client sends -> the deployment that serves it (served model name or LoRA adapter).
const MODELS = {"llama-3.1-8b-instruct-ollama": "ollama-dev", "llama-3.1-8b-instruct-q4km": "gguf-chat", "llama-3.1-8b-instruct-tgi": "tgi-chat", "llama-3.1-8b-instruct-trtllm": "trtllm-chat", "qwen2.5-7b-instruct": "vllm-chat", "qwen2.5-7b-instruct-sglang": "sglang-chat"};
const DEPLOYMENTS = ["gguf-chat", "ollama-dev", "sglang-chat", "tgi-chat", "trtllm-chat", "vllm-chat"];

function bearer(r) {
    const header = r.headersIn.Authorization || '';
    const match = /^Bearer[ \t]+([^ \t]+)[ \t]*$/i.exec(header);
    return match ? match[1] : '';
}

// js_set $gpufleet_key_hash: SHA-256 hex of the presented key ('' without one), the key of the accepted
// keys map and of the per-key rate limits, so neither the map nor the shared zones hold a key.
function keyHash(r) {
    const key = bearer(r);
    return key ? crypto.createHash('sha256').update(key).digest('hex') : '';
}

// OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
function fail(r, status, message, type, code) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({ error: { message: message, type: type, param: null, code: code } }) + '\n');
}

function authorized(r) {
    if (r.variables.gpufleet_key_ok === '1') {
        return true;
    }
    const message = bearer(r)
        ? 'Incorrect API key provided.'
        : 'You didn\'t provide an API key. Send it as "Authorization: Bearer <key>".';
    fail(r, 401, message, 'invalid_request_error', 'invalid_api_key');
    return false;
}

function has(table, name) {
    return Object.prototype.hasOwnProperty.call(table, name);
}

// The body's "model", or null when the body is not a JSON object with a string "model".
// r.requestText is only set in a js_content handler, which reads the body first.
function requestedModel(r) {
    try {
        const body = JSON.parse(r.requestText || '');
        return body !== null && typeof body.model === 'string' ? body.model : null;
    } catch (e) {
        return null;
    }
}

function chooseDeployment(r, model) {
    const prefix = r.variables.gpufleet_prefix;
    if (prefix) {
        if (DEPLOYMENTS.indexOf(prefix) < 0) {
            fail(r, 404, 'No deployment \'' + prefix + '\'. Deployments: ' + DEPLOYMENTS.join(', ') + '.',
                 'invalid_request_error', 'not_found');
            return null;
        }
        return prefix;
    }
    if (model === null) {
        fail(r, 400, 'The body must be a JSON object with a "model" field.', 'invalid_request_error', null);
        return null;
    }
    if (!has(MODELS, model)) {
        fail(r, 404, 'The model `' + model + '` does not exist or you do not have access to it.',
             'invalid_request_error', 'model_not_found');
        return null;
    }
    return MODELS[model];
}

// js_content of /v1/ and /<deployment>/v1/: check the key, pick the deployment, hand over to its named
// location (the body already read stays with the request and is proxied from memory).
function route(r) {
    if (!authorized(r)) {
        return;
    }
    const model = requestedModel(r);
    if (model !== null) {
        r.variables.gpufleet_model = model;
    }
    const deployment = chooseDeployment(r, model);
    if (deployment === null) {
        return;
    }
    r.variables.gpufleet_deployment = deployment;
    r.internalRedirect('@' + deployment);
}

// GET /v1/models: every model name the fleet serves, in OpenAI's list format.
function models(r) {
    if (!authorized(r)) {
        return;
    }
    const data = Object.keys(MODELS).map(function (id) {
        return { id: id, object: 'model', owned_by: 'gpufleet:' + MODELS[id] };
    });
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify({ object: 'list', data: data }) + '\n');
}

export default { keyHash, route, models };
