// The page's client of the public API: the caller's key as a Bearer token, every error as {status, code,
// message} (the API's error body), and the job event stream read with fetch() — EventSource cannot send an
// Authorization header — parsed as Server-Sent Events here, resumable with Last-Event-ID.

const KEY_ITEM = "tally.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0: the request never got an answer
    this.code = code;
  }
}

export class Api {
  constructor(storage = window.localStorage) {
    this.storage = storage;
  }

  get key() {
    return this.storage.getItem(KEY_ITEM) || "";
  }

  set key(value) {
    if (value) this.storage.setItem(KEY_ITEM, value);
    else this.storage.removeItem(KEY_ITEM);
  }

  headers(extra = {}) {
    return this.key ? { ...extra, Authorization: `Bearer ${this.key}` } : { ...extra };
  }

  /** The response of `method path` (paths are relative: the page works under any root path), or an ApiError. */
  async request(method, path, { query, json, body, contentType, headers, signal } = {}) {
    const url = query ? `${path}?${new URLSearchParams(clean(query))}` : path;
    const sent = { ...headers };
    if (json !== undefined) {
      sent["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (contentType) {
      sent["Content-Type"] = contentType;
    }
    let response;
    try {
      response = await fetch(url, { method, body, headers: this.headers(sent), signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network", `the API did not answer (${err.message})`);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  async json(method, path, options) {
    const response = await this.request(method, path, options);
    return response.status === 204 ? null : response.json();
  }

  async blob(path, options) {
    return (await this.request("GET", path, options)).blob();
  }

  /** Yields the stream's events ({id, event, data}) until it ends; throws ApiError when it cannot start. */
  async *events(path, lastEventId, signal) {
    const headers = { Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await this.request("GET", path, { headers, signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        yield* parser.feed(value);
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }
}

/** Server-Sent Events, as the HTML standard parses them: lines end in CRLF, LF or CR; a blank line
 *  dispatches; ":" starts a comment (the API's heartbeats); data lines join with "\n". */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  *feed(text) {
    this.buffer += text;
    // A trailing CR may be the first half of a CRLF split across chunks: it waits for the next one.
    const held = this.buffer.endsWith("\r") ? 1 : 0;
    const lines = this.buffer.slice(0, this.buffer.length - held).split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + (held ? "\r" : ""); // an unfinished line waits for the next chunk
    for (const line of lines) {
      if (line === "") {
        if (this.data.length) yield { id: this.id, event: this.event || "message", data: this.data.join("\n") };
        this.reset();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.event = value;
      else if (field === "data") this.data.push(value);
      else if (field === "id") this.id = value;
    }
  }
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && typeof body.code === "string") code = body.code;
    if (body && typeof body.message === "string") message = body.message;
  } catch {
    // not the API's JSON error body (a proxy's page): keep the status line
  }
  return new ApiError(response.status, code, message);
}

function clean(query) {
  return Object.fromEntries(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ""));
}
