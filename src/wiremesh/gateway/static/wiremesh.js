// wiremesh browser client: one ES module, no build step, no dependencies.
//
// It opens a WebSocket to a wiremesh gateway (`/ws/<service>` or `/ws/<service>/<node>`),
// carries the token, hands binary frames to the application as Uint8Array, reconnects
// with full-jitter exponential backoff when the close code allows it (never on an auth
// failure), refreshes the token on the gateway's `{"wm":"expiring"}` notice, and offers a
// request/reply helper over the `R`/`A`/`E` envelope. The gateway's side of this contract
// is documented in docs/protocol.md ("Browser gateway").

/** The subprotocol every session speaks. */
export const SUBPROTOCOL = "wiremesh.v1";

/** Prefix of the subprotocol entry that carries the token (`bearer.<JWT>`). */
export const BEARER_PREFIX = "bearer.";

/**
 * The gateway's close codes (RFC 6455 codes and wiremesh's private 4000-4999 codes).
 * @readonly
 * @enum {number}
 */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  NO_STATUS: 1005,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  BAD_GATEWAY: 1014,
  IDLE_TIMEOUT: 4000,
  TOKEN_EXPIRED: 4001,
  FORBIDDEN: 4003,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
});

/**
 * Close codes after which the client reconnects (1006 and 1005 are what a browser reports
 * when the connection dropped without a close frame: the gateway or the network went away).
 * 4001 is handled apart: only with a token provider.
 */
const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014, 4000, 4008, 4029]);

/** Request/reply envelope markers (first byte of a binary frame). */
export const Envelope = Object.freeze({ REQUEST: 0x52, REPLY: 0x41, ERROR: 0x45 });

/**
 * @typedef {"connecting" | "open" | "waiting" | "closed"} State
 * `connecting`: a WebSocket is opening. `open`: frames flow. `waiting`: the connection was
 * lost and the client waits out its backoff before the next attempt. `closed`: final, the
 * client will not reconnect (see {@link CloseInfo}).
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initial=500] first delay ceiling, in milliseconds
 * @property {number} [max=30000] largest delay ceiling, in milliseconds
 * @property {number} [factor=2] growth of the ceiling per failed attempt
 * @property {number} [jitter=1] share of the ceiling that is random: 1 is "full jitter"
 *   (a delay drawn uniformly in [0, ceiling]), 0 is no jitter (always the ceiling)
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code the WebSocket close code (1006 when the connection never opened)
 * @property {string} reason the close reason sent by the gateway, if any
 * @property {boolean} wasOpen whether this connection had opened
 * @property {boolean} reconnect whether the client will try again
 * @property {number} [delay] milliseconds until the next attempt, when it reconnects
 * @property {number} [status] the HTTP status the gateway answered to the probe, when the
 *   connection failed before opening and a probe was made (401, 403, 404, 429, 426...)
 * @property {string} [kind] why the client stopped, when it did: "closed" (by the
 *   application), "unauthorized", "forbidden", "not_found", "refused" (a close code that is
 *   not retried), "gave_up" (`maxRetries` reached)
 */

/**
 * @typedef {object} OpenInfo
 * @property {string} url the WebSocket URL (without the token)
 * @property {string} protocol the subprotocol the gateway selected
 * @property {number} attempt how many failed attempts preceded this one since the last
 *   stable connection (0 for a first try)
 */

/**
 * @typedef {"connect" | "reconnect" | "refresh" | "expired" | "unauthorized"} TokenReason
 * Why a token is asked for: before a first attempt, before a later attempt, on the
 * gateway's `expiring` notice (or the client's own timer), after a 4001 close, after the
 * gateway answered 401.
 */

/**
 * @typedef {(reason: TokenReason) => (string | Promise<string>)} TokenProvider
 * Returns a (fresh) token. Called before every connection attempt, on refresh and after
 * an auth failure; it may cache and return the same token while that one is still valid.
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} service the service to reach (`/ws/<service>`)
 * @property {string} [node] a node id: pin the session to that node (`/ws/<service>/<node>`)
 * @property {string | URL} [url] the gateway's base URL (`https://host:8443`,
 *   `wss://host/prefix`); default: the page's own origin
 * @property {string} [token] a token (JWT); it cannot be renewed, so a 4001 close is final
 * @property {TokenProvider} [getToken] a token provider; takes precedence over `token`
 * @property {"subprotocol" | "cookie"} [auth="subprotocol"] how the token travels:
 *   as the subprotocol entry `bearer.<JWT>`, or not at all ("cookie": the browser sends
 *   the `wiremesh_token` cookie that the application's server set)
 * @property {string[]} [protocols] more subprotocols to offer after `wiremesh.v1`
 * @property {BackoffOptions} [backoff] reconnection delays
 * @property {boolean} [reconnect=true] whether to reconnect at all
 * @property {number} [maxRetries=Infinity] failed attempts in a row before giving up
 * @property {number} [stableAfter=5000] milliseconds a connection must stay open before
 *   the backoff starts again from `initial`
 * @property {number} [refreshBefore=30] seconds before the token's `exp` at which the
 *   client refreshes it by itself, in case the gateway's notice does not come
 * @property {number} [requestTimeout=10000] default timeout of {@link Connection#request}, ms
 * @property {boolean} [probe=true] after a connection fails before opening, ask the gateway
 *   why with a plain GET on the same path (a browser cannot see a refused handshake's status)
 * @property {(frame: Uint8Array) => void} [onFrame] a binary frame from the node
 * @property {(info: OpenInfo) => void} [onOpen] the session is open
 * @property {(info: CloseInfo) => void} [onClose] a connection closed (or failed to open)
 * @property {(state: State, previous: State) => void} [onStateChange] any state change
 * @property {(message: object) => void} [onControl] a control message from the gateway
 *   (`{"wm": "expiring" | "refreshed" | ...}`), after the client has acted on it
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one)
 * @property {typeof fetch} [fetch] the fetch function for the probe (default: the global one)
 */

/** An error of this client, with a machine-readable `kind`. */
export class WiremeshError extends Error {
  /**
   * @param {"timeout" | "closed" | "not_open" | "remote" | "unauthorized" | "bad_argument"} kind
   * @param {string} message
   */
  constructor(kind, message) {
    super(message);
    this.name = "WiremeshError";
    /** @type {string} */
    this.kind = kind;
  }
}

// ------------------------------------------------------------------------ pure logic

/**
 * The delay before reconnection attempt number `attempt` (0 for the first retry):
 * a ceiling of `initial * factor ** attempt`, capped at `max`, of which the share `jitter`
 * is random.
 * @param {number} attempt
 * @param {BackoffOptions} [options]
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { initial = 500, max = 30000, factor = 2, jitter = 1 } = options;
  const ceiling = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  const share = Math.min(1, Math.max(0, jitter));
  return ceiling - share * ceiling * random();
}

/**
 * Whether a session closed with `code` (after it had opened) is worth reconnecting.
 * @param {number} code
 * @param {{canRenewToken?: boolean}} [options] whether a token provider can get a new token
 * @returns {boolean}
 */
export function shouldReconnect(code, { canRenewToken = false } = {}) {
  if (code === CloseCode.TOKEN_EXPIRED) return canRenewToken;
  return RECONNECT_CODES.has(code);
}

/**
 * What to do after a connection failed before opening, given the HTTP status the probe
 * got (`undefined` when the probe itself failed: the gateway is unreachable).
 * @param {number | undefined} status
 * @returns {"retry" | "unauthorized" | "forbidden" | "not_found"}
 */
export function probeVerdict(status) {
  if (status === 401) return "unauthorized";
  if (status === 403) return "forbidden";
  if (status === 404) return "not_found";
  return "retry";
}

/**
 * The claims of a JWT, read without checking its signature (the gateway checks it);
 * `undefined` when `token` is not a readable JWT.
 * @param {string} token
 * @returns {Record<string, any> | undefined}
 */
export function jwtClaims(token) {
  const part = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The bytes of a value to send: binary as is, a string as UTF-8.
 * @param {ArrayBuffer | ArrayBufferView | string} data
 * @returns {Uint8Array}
 */
export function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (typeof data === "string") return new TextEncoder().encode(data);
  throw new WiremeshError("bad_argument", "send an ArrayBuffer, a typed array or a string");
}

/**
 * A frame in the request/reply envelope: marker byte, uint32 big-endian id, payload.
 * @param {number} marker one of {@link Envelope}
 * @param {number} id
 * @param {Uint8Array} payload
 * @returns {Uint8Array}
 */
export function encodeEnvelope(marker, id, payload) {
  const frame = new Uint8Array(5 + payload.byteLength);
  frame[0] = marker;
  new DataView(frame.buffer).setUint32(1, id >>> 0, false);
  frame.set(payload, 5);
  return frame;
}

/**
 * The envelope of a frame, or `undefined` for an ordinary frame.
 * @param {Uint8Array} frame
 * @returns {{marker: number, id: number, payload: Uint8Array} | undefined}
 */
export function decodeEnvelope(frame) {
  const marker = frame[0];
  if (frame.byteLength < 5) return undefined;
  if (marker !== Envelope.REQUEST && marker !== Envelope.REPLY && marker !== Envelope.ERROR) {
    return undefined;
  }
  const id = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(1, false);
  return { marker, id, payload: frame.subarray(5) };
}

/**
 * The WebSocket URL of a session and the http(s) URL of its probe.
 * @param {string | URL | undefined} base
 * @param {string} service
 * @param {string} [node]
 * @returns {{ws: string, http: string}}
 */
export function sessionUrls(base, service, node) {
  if (!service) throw new WiremeshError("bad_argument", "connect() needs a service");
  const root = new URL(base ?? globalThis.location.origin);
  const scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[root.protocol];
  if (!scheme) throw new WiremeshError("bad_argument", `not a gateway URL: ${root.href}`);
  const prefix = root.pathname.replace(/\/+$/, "");
  let path = `${prefix}/ws/${encodeURIComponent(service)}`;
  if (node) path += `/${encodeURIComponent(node)}`;
  const ws = new URL(path + root.search, root);
  ws.protocol = scheme;
  const http = new URL(ws.href);
  http.protocol = scheme === "wss:" ? "https:" : "http:";
  return { ws: ws.href, http: http.href };
}

// ------------------------------------------------------------------------ the connection

/**
 * A session with one node through the gateway, reopened as long as the close codes allow.
 * Create it with {@link connect}. The callbacks given to `connect` are properties of the
 * connection and may be replaced at any time (`conn.onFrame = ...`).
 */
export class Connection {
  /** @param {ConnectOptions} options */
  constructor(options) {
    const urls = sessionUrls(options.url, options.service, options.node);
    /** The WebSocket URL of this session. */
    this.url = urls.ws;
    /** @private */ this._probeUrl = urls.http;
    /** @private */ this._options = options;
    /** @private @type {typeof WebSocket} */
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** @private @type {typeof fetch} */
    this._fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    /** @type {((frame: Uint8Array) => void) | undefined} */
    this.onFrame = options.onFrame;
    /** @type {((info: OpenInfo) => void) | undefined} */
    this.onOpen = options.onOpen;
    /** @type {((info: CloseInfo) => void) | undefined} */
    this.onClose = options.onClose;
    /** @type {((state: State, previous: State) => void) | undefined} */
    this.onStateChange = options.onStateChange;
    /** @type {((message: object) => void) | undefined} */
    this.onControl = options.onControl;
    /** @type {State} */
    this.state = "connecting";
    /** The close info that ended the connection for good, once `state` is "closed".
     * @type {CloseInfo | undefined} */
    this.closeInfo = undefined;
    /** The token in use, if any. @type {string | undefined} */
    this.token = options.token;
    /** The current token's expiry (unix seconds), when known. @type {number | undefined} */
    this.expires = undefined;

    /** @private @type {WebSocket | undefined} */ this._socket = undefined;
    /** @private */ this._attempt = 0;
    /** @private */ this._nextId = 1;
    /** @private @type {Map<number, {resolve: (v: Uint8Array) => void, reject: (e: Error) => void, timer: any}>} */
    this._pending = new Map();
    /** @private @type {any} */ this._retryTimer = undefined;
    /** @private @type {any} */ this._stableTimer = undefined;
    /** @private @type {any} */ this._refreshTimer = undefined;
    /** @private @type {Promise<void> | undefined} */ this._refreshing = undefined;
    /** @private */ this._retriedUnauthorized = false;
    /** @private @type {Array<{resolve: () => void, reject: (e: Error) => void}>} */
    this._openWaiters = [];
    /** @private */ this._onOnline = () => {
      if (this.state === "waiting") this._attemptNow("reconnect");
    };
    globalThis.addEventListener?.("online", this._onOnline);
    this._open("connect");
  }

  /** Whether frames can be sent now. */
  get isOpen() {
    return this.state === "open";
  }

  /** Bytes queued in the browser and not yet sent (0 when not connected). */
  get bufferedAmount() {
    return this._socket?.bufferedAmount ?? 0;
  }

  /** Requests sent and not yet answered. */
  get pendingRequests() {
    return this._pending.size;
  }

  /**
   * Resolves when the session is open (at once if it is), rejects if the connection
   * closes for good first.
   * @returns {Promise<void>}
   */
  opened() {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(this._closedError());
    return new Promise((resolve, reject) => {
      this._openWaiters.push({ resolve, reject });
    });
  }

  /**
   * Send one binary frame to the node. A string is sent as its UTF-8 bytes (text frames
   * are the gateway's control channel). Throws a {@link WiremeshError} of kind "not_open"
   * when the session is not open: frames are never queued across reconnections.
   * @param {ArrayBuffer | ArrayBufferView | string} data
   */
  send(data) {
    const bytes = toBytes(data);
    if (this.state !== "open" || !this._socket) {
      throw new WiremeshError("not_open", `cannot send: the connection is ${this.state}`);
    }
    this._socket.send(bytes);
  }

  /**
   * Send a request in the `R` envelope and wait for the node's `A` reply (resolves with
   * its payload) or `E` reply (rejects with a {@link WiremeshError} of kind "remote"
   * carrying the node's message). Rejects with kind "timeout" after `timeout` ms, and
   * with kind "closed" when the connection closes first.
   * @param {ArrayBuffer | ArrayBufferView | string} data
   * @param {{timeout?: number}} [options]
   * @returns {Promise<Uint8Array>}
   */
  request(data, { timeout = this._options.requestTimeout ?? 10000 } = {}) {
    const payload = toBytes(data);
    if (this.state !== "open") {
      return Promise.reject(
        new WiremeshError("not_open", `cannot request: the connection is ${this.state}`),
      );
    }
    const id = this._allocateId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new WiremeshError("timeout", `no reply within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer });
      try {
        this.send(encodeEnvelope(Envelope.REQUEST, id, payload));
      } catch (error) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(error);
      }
    });
  }

  /**
   * Get a new token from the provider and hand it to the gateway for this session
   * (`{"wm": "refresh"}`). Done by the client itself on the gateway's `expiring` notice;
   * call it after a login change. Resolves once the token was sent.
   * @returns {Promise<void>}
   */
  refreshToken() {
    if (!this._refreshing) {
      this._refreshing = this._refresh().finally(() => {
        this._refreshing = undefined;
      });
    }
    return this._refreshing;
  }

  /**
   * Close the session for good: no reconnection; pending requests fail.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = CloseCode.NORMAL, reason = "") {
    if (this.state === "closed") return;
    const socket = this._socket;
    this._socket = undefined;
    if (socket) {
      this._detach(socket);
      try {
        socket.close(code, reason);
      } catch {
        socket.close();
      }
    }
    this._finish({ code, reason, wasOpen: this.state === "open", reconnect: false, kind: "closed" });
  }

  // -------------------------------------------------------------------- internals

  /** @private */
  _allocateId() {
    for (;;) {
      const id = this._nextId;
      this._nextId = this._nextId >= 0xffffffff ? 1 : this._nextId + 1;
      if (!this._pending.has(id)) return id;
    }
  }

  /**
   * @private
   * @param {State} state
   */
  _setState(state) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this._call(this.onStateChange, state, previous);
  }

  /**
   * Call an application callback; its exceptions must not break the connection.
   * @private
   * @param {Function | undefined} callback
   * @param {...any} args
   */
  _call(callback, ...args) {
    if (!callback) return;
    try {
      callback(...args);
    } catch (error) {
      setTimeout(() => {
        throw error;
      });
    }
  }

  /**
   * @private
   * @param {TokenReason} reason why a token is asked for
   * @returns {Promise<string | undefined>}
   */
  async _currentToken(reason) {
    if (this._options.getToken) {
      this.token = await this._options.getToken.call(undefined, reason);
    }
    return this.token;
  }

  /**
   * @private
   * @param {TokenReason} reason
   */
  async _open(reason) {
    this._setState("connecting");
    let token;
    try {
      token = this._options.auth === "cookie" ? undefined : await this._currentToken(reason);
    } catch (error) {
      if (this.state !== "connecting") return;
      // the provider failed (offline login server...): count it as a failed attempt
      this._scheduleRetry({ code: CloseCode.ABNORMAL, reason: String(error), wasOpen: false });
      return;
    }
    if (this.state !== "connecting") return; // closed meanwhile
    const protocols = [SUBPROTOCOL, ...(this._options.protocols ?? [])];
    if (token) protocols.push(BEARER_PREFIX + token);
    let socket;
    try {
      socket = new this._WebSocket(this.url, protocols);
    } catch (error) {
      this._finish({
        code: CloseCode.ABNORMAL,
        reason: String(error),
        wasOpen: false,
        reconnect: false,
        kind: "refused",
      });
      return;
    }
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this._retriedUnauthorized = false;
      this._setState("open");
      this._readExpiry(token);
      this._stableTimer = setTimeout(() => {
        this._attempt = 0;
      }, this._options.stableAfter ?? 5000);
      const waiters = this._openWaiters.splice(0);
      for (const waiter of waiters) waiter.resolve();
      this._call(this.onOpen, {
        url: this.url,
        protocol: socket.protocol,
        attempt: this._attempt,
      });
    };
    socket.onmessage = (event) => this._receive(event.data);
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = undefined;
      this._detach(socket);
      this._lost({ code: event.code, reason: event.reason, wasOpen: opened });
    };
  }

  /**
   * @private
   * @param {WebSocket} socket
   */
  _detach(socket) {
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    clearTimeout(this._stableTimer);
    clearTimeout(this._refreshTimer);
    this._failPending("closed", "the connection closed before the reply");
  }

  /**
   * @private
   * @param {ArrayBuffer | string} data
   */
  _receive(data) {
    if (typeof data === "string") {
      this._control(data);
      return;
    }
    const frame = new Uint8Array(data);
    const envelope = decodeEnvelope(frame);
    if (envelope && envelope.marker !== Envelope.REQUEST) {
      // a reply: to a pending request, or a late one after its timeout (dropped)
      const pending = this._pending.get(envelope.id);
      if (!pending) return;
      this._pending.delete(envelope.id);
      clearTimeout(pending.timer);
      if (envelope.marker === Envelope.REPLY) pending.resolve(envelope.payload);
      else {
        const message = new TextDecoder().decode(envelope.payload);
        pending.reject(new WiremeshError("remote", message));
      }
      return;
    }
    this._call(this.onFrame, frame);
  }

  /**
   * @private
   * @param {string} text
   */
  _control(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (message.wm === "expiring") {
      if (typeof message.exp === "number") this.expires = message.exp;
      if (this._options.getToken) this.refreshToken().catch(() => {});
    } else if (message.wm === "refreshed") {
      if (typeof message.exp === "number") this._scheduleRefresh(message.exp);
    }
    this._call(this.onControl, message);
  }

  /**
   * @private
   * @param {string | undefined} token
   */
  _readExpiry(token) {
    const exp = token ? jwtClaims(token)?.exp : undefined;
    if (typeof exp === "number") this._scheduleRefresh(exp);
  }

  /**
   * Refresh by ourselves `refreshBefore` seconds ahead of `exp`, in case the gateway's
   * notice does not come; a refresh that is already running absorbs the second trigger.
   * @private
   * @param {number} exp
   */
  _scheduleRefresh(exp) {
    this.expires = exp;
    clearTimeout(this._refreshTimer);
    if (!this._options.getToken) return;
    const due = (exp - (this._options.refreshBefore ?? 30)) * 1000 - Date.now();
    if (due <= 0) return; // the gateway's notice (or the 4001 close) will come
    this._refreshTimer = setTimeout(
      () => this.refreshToken().catch(() => {}),
      Math.min(due, 0x7fffffff),
    );
  }

  /** @private */
  async _refresh() {
    if (!this._options.getToken) {
      throw new WiremeshError("unauthorized", "no token provider (getToken) to refresh with");
    }
    const token = await this._options.getToken.call(undefined, "refresh");
    this.token = token;
    if (this.state !== "open" || !this._socket) return; // the next connection uses it
    this._socket.send(JSON.stringify({ wm: "refresh", token }));
  }

  /**
   * @private
   * @param {"closed" | "timeout"} kind
   * @param {string} message
   */
  _failPending(kind, message) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const { reject, timer } of pending) {
      clearTimeout(timer);
      reject(new WiremeshError(kind, message));
    }
  }

  /**
   * A connection ended (or failed to open): decide whether and when to try again.
   * @private
   * @param {{code: number, reason: string, wasOpen: boolean}} event
   */
  async _lost(event) {
    const canRenew = Boolean(this._options.getToken) && this._options.auth !== "cookie";
    if (this._options.reconnect === false) {
      this._finish({ ...event, reconnect: false, kind: "refused" });
      return;
    }
    if (event.wasOpen) {
      if (!shouldReconnect(event.code, { canRenewToken: canRenew })) {
        this._finish({ ...event, reconnect: false, kind: "refused" });
      } else {
        const reason = event.code === CloseCode.TOKEN_EXPIRED ? "expired" : "reconnect";
        this._scheduleRetry(event, { tokenReason: reason });
      }
      return;
    }
    // Closed before open: the browser hides the handshake's status; ask the gateway.
    this._setState("waiting");
    const probe = this._options.probe === false ? undefined : await this._probe();
    if (this.state !== "waiting") return; // closed meanwhile
    const status = probe?.status;
    const verdict = probeVerdict(status);
    if (verdict === "unauthorized" && canRenew && !this._retriedUnauthorized) {
      // one new token, one more try; a second 401 is final
      this._retriedUnauthorized = true;
      this._call(this.onClose, { ...event, status, reconnect: true, delay: 0 });
      this._open("unauthorized");
      return;
    }
    if (verdict !== "retry") {
      this._finish({ ...event, status, reconnect: false, kind: verdict });
      return;
    }
    this._scheduleRetry({ ...event, status }, { minDelay: probe?.retryAfter });
  }

  /**
   * @private
   * @returns {Promise<{status: number, retryAfter: number | undefined} | undefined>}
   */
  async _probe() {
    if (!this._fetch) return undefined;
    /** @type {Record<string, string>} */
    const headers = {};
    if (this.token && this._options.auth !== "cookie") headers.Authorization = `Bearer ${this.token}`;
    try {
      const response = await this._fetch(this._probeUrl, {
        method: "GET",
        headers,
        cache: "no-store",
        credentials: this._options.auth === "cookie" ? "include" : "same-origin",
      });
      const after = Number(response.headers.get("Retry-After"));
      return {
        status: response.status,
        retryAfter: Number.isFinite(after) && after > 0 ? after * 1000 : undefined,
      };
    } catch {
      return undefined; // unreachable: the gateway is down or restarting
    }
  }

  /**
   * @private
   * @param {{code: number, reason: string, wasOpen: boolean, status?: number}} event
   * @param {{minDelay?: number, tokenReason?: TokenReason}} [options]
   */
  _scheduleRetry(event, { minDelay = 0, tokenReason = "reconnect" } = {}) {
    const maxRetries = this._options.maxRetries ?? Infinity;
    if (this._attempt >= maxRetries) {
      this._finish({ ...event, reconnect: false, kind: "gave_up" });
      return;
    }
    const delay = Math.max(minDelay, backoffDelay(this._attempt, this._options.backoff));
    this._attempt += 1;
    this._setState("waiting");
    this._call(this.onClose, { ...event, reconnect: true, delay });
    this._retryTimer = setTimeout(() => this._attemptNow(tokenReason), delay);
  }

  /**
   * @private
   * @param {TokenReason} reason
   */
  _attemptNow(reason) {
    clearTimeout(this._retryTimer);
    this._retryTimer = undefined;
    this._open(reason);
  }

  /**
   * @private
   * @param {CloseInfo} info
   */
  _finish(info) {
    clearTimeout(this._retryTimer);
    clearTimeout(this._stableTimer);
    clearTimeout(this._refreshTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    this._failPending("closed", "the connection is closed");
    this.closeInfo = info;
    this._setState("closed");
    const waiters = this._openWaiters.splice(0);
    for (const waiter of waiters) waiter.reject(this._closedError());
    this._call(this.onClose, info);
  }

  /** @private */
  _closedError() {
    const info = this.closeInfo;
    const kind = info?.kind === "unauthorized" ? "unauthorized" : "closed";
    const detail = info ? ` (${info.kind ?? "closed"}, code ${info.code}${info.status ? `, HTTP ${info.status}` : ""})` : "";
    return new WiremeshError(kind, `the connection is closed${detail}`);
  }
}

/**
 * Open a session with a node of `options.service` through the gateway.
 *
 * ```js
 * import { connect } from "/_wiremesh/wiremesh.js";
 * const conn = connect({ service: "chat", token, onFrame: (frame) => show(frame) });
 * await conn.opened();
 * conn.send(new TextEncoder().encode("hello"));
 * const reply = await conn.request(bytes, { timeout: 2000 });
 * ```
 * @param {ConnectOptions} options
 * @returns {Connection}
 */
export function connect(options) {
  return new Connection(options);
}
