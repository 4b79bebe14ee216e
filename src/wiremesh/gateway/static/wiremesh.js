// wiremesh browser client: one ES module, no build step, no dependencies.
//
// It opens a WebSocket to a wiremesh gateway (`/ws/<service>` or `/ws/<service>/<node>`),
// carries the token, hands binary frames to the application as Uint8Array, reconnects
// with full-jitter exponential backoff when the close code allows it (never on an auth
// failure), refreshes the token on the gateway's `{"wm":"expiring"}` notice, offers a
// request/reply helper over the `R`/`A`/`E` envelope, and subscribes to channels over the
// text control channel: it subscribes again after every reconnection and recovers what it
// missed. The gateway's side of this contract is documented in docs/protocol.md ("Browser
// gateway") and, for channels, in its section 13.5 ("Channels").

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
 *   client refreshes it by itself, in case the gateway's notice does not come (a session
 *   that opens with a token already that close to its `exp` refreshes it at once)
 * @property {number} [requestTimeout=10000] default timeout of {@link Connection#request}, ms
 * @property {boolean} [probe=true] after a connection fails before opening, ask the gateway
 *   why with a plain GET on the same path (a browser cannot see a refused handshake's status)
 * @property {(frame: Uint8Array) => void} [onFrame] a binary frame from the node
 * @property {(info: OpenInfo) => void} [onOpen] the session is open
 * @property {(info: CloseInfo) => void} [onClose] a connection closed (or failed to open)
 * @property {(state: State, previous: State) => void} [onStateChange] any state change
 * @property {(message: object) => void} [onControl] a control message from the gateway
 *   (`{"wm": "expiring" | "refreshed" | ...}`), after the client has acted on it; channel
 *   messages never come here (see {@link Connection#subscribe})
 * @property {(channel: string, data: any, info: PublicationInfo) => void} [onPublication]
 *   a publication of a subscription that has no `onMessage` handler: one the node made
 *   itself (`self.channels.subscribe(session, channel)`), or one subscribed without it
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one)
 * @property {typeof fetch} [fetch] the fetch function for the probe (default: the global one)
 */

/**
 * @typedef {"timeout" | "closed" | "not_open" | "remote" | "unauthorized" | "bad_argument"
 *   | "bad_request" | "forbidden" | "no_channel" | "already_subscribed" | "too_big"
 *   | "rate_limited" | "unavailable"} ErrorKind
 * The first six are the connection's; the others are the gateway's answers to a channel
 * request (see {@link ChannelCode} and {@link channelErrorKind}).
 */

/** An error of this client, with a machine-readable `kind`. */
export class WiremeshError extends Error {
  /**
   * @param {ErrorKind} kind
   * @param {string} message
   * @param {{code?: number, channel?: string}} [details] the gateway's reply code and the
   *   channel, for an error about a channel
   */
  constructor(kind, message, { code, channel } = {}) {
    super(message);
    this.name = "WiremeshError";
    /** @type {ErrorKind} */
    this.kind = kind;
    /** The gateway's reply code ({@link ChannelCode}), when it refused a channel request.
     * @type {number | undefined} */
    this.code = code;
    /** The channel the error is about, if any. @type {string | undefined} */
    this.channel = channel;
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

// ------------------------------------------------------------------------ channels: pure logic
//
// A subscription keeps the position (offset, epoch) of the last publication it delivered.
// Offsets of a channel's publications grow strictly within one epoch; a new epoch means the
// channel's history started again. These functions take a position and a gateway message
// and say what to deliver and the position after it; the connection below only routes.

/**
 * Reply codes of the gateway's `{"wm": "error"}` answers to channel requests; the session
 * stays open. Each maps to a {@link WiremeshError} kind ({@link channelErrorKind}).
 * @readonly
 * @enum {number}
 */
export const ChannelCode = Object.freeze({
  BAD_REQUEST: 4400,
  FORBIDDEN: 4403,
  NO_CHANNEL: 4404,
  ALREADY_SUBSCRIBED: 4409,
  TOO_BIG: 4413,
  RATE_LIMITED: 4429,
  UNAVAILABLE: 4503,
});

/** @type {ReadonlyMap<number, ErrorKind>} */
const CHANNEL_ERROR_KINDS = new Map([
  [ChannelCode.BAD_REQUEST, "bad_request"],
  [ChannelCode.FORBIDDEN, "forbidden"],
  [ChannelCode.NO_CHANNEL, "no_channel"],
  [ChannelCode.ALREADY_SUBSCRIBED, "already_subscribed"],
  [ChannelCode.TOO_BIG, "too_big"],
  [ChannelCode.RATE_LIMITED, "rate_limited"],
  [ChannelCode.UNAVAILABLE, "unavailable"],
]);

/** Control messages that belong to channels (`error` too, when it answers a channel request). */
const CHANNEL_MESSAGES = new Set([
  "subscribed",
  "pub",
  "join",
  "leave",
  "unsubscribed",
  "published",
  "presence",
]);

/** Publications kept while a subscribe waits for its answer (the gateway answers first). */
const MAX_HELD_PUBLICATIONS = 1000;

/**
 * @typedef {object} Position
 * Where a subscription stands in its channel's history.
 * @property {number} offset the offset of the last publication seen (0: none, or the channel
 *   keeps no history)
 * @property {string} epoch the history's epoch ("" when unknown or when there is no history)
 */

/**
 * @typedef {object} PublicationInfo
 * @property {string} channel
 * @property {number} offset the publication's offset (0 when the channel keeps no history)
 * @property {string} epoch the history's epoch ("" when the channel keeps no history)
 * @property {boolean} recovered whether it was missed while disconnected and delivered from
 *   the channel's history on subscribing again
 */

/**
 * @typedef {object} Member
 * One subscriber of a channel, in presence answers and join/leave notices.
 * @property {string} session the session id
 * @property {string | null} principal who the session authenticated as (`sub` of the token)
 * @property {string} gateway the gateway that holds the session
 */

/**
 * @typedef {"" | "epoch" | "gone" | "future" | "no_history"} RecoveryReason
 * Why what was missed cannot be told (with `recovered: false`): "" when no recovery was
 * asked for, "epoch" the channel's history started again, "gone" the publications after
 * the position are no longer kept, "future" the position is ahead of the channel, and
 * "no_history" the channel keeps none.
 */

/**
 * @typedef {object} SubscribedInfo
 * What a `subscribed` answer said, given to `onSubscribed` and to `ready`.
 * @property {string} channel
 * @property {number} offset the channel's offset when the subscription began
 * @property {string} epoch the channel's epoch when the subscription began
 * @property {boolean} recovered whether every publication missed since the position asked
 *   for was delivered; `false` after a reconnection means the page must reload its state
 * @property {RecoveryReason} reason why not, when `recovered` is false
 * @property {boolean} resubscribed whether this subscription had held before (the client
 *   subscribed again after a reconnection)
 * @property {number} publications how many recovered publications follow through `onMessage`
 */

/**
 * @typedef {object} UnsubscribedInfo
 * @property {number} code 1000 when the page or the node unsubscribed; a {@link ChannelCode}
 *   when the gateway refused (4503 also for no answer in time); the close code when the
 *   connection closed for good
 * @property {string} reason
 */

/**
 * @typedef {"subscribing" | "subscribed" | "unsubscribed"} SubscriptionState
 * `subscribing`: asked for, or waiting for the connection to subscribe again (also after a
 * refusal that is worth retrying). `subscribed`: publications flow. `unsubscribed`: final.
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {(data: any, info: PublicationInfo) => void} [onMessage] a publication, in
 *   order, without duplicates; without it, publications go to the connection's `onPublication`
 * @property {(info: SubscribedInfo) => void} [onSubscribed] the subscription holds, the first
 *   time and after every reconnection (`info.resubscribed`); with `info.recovered` false
 *   after a reconnection, the page reloads its state
 * @property {(member: Member) => void} [onJoin] someone subscribed (channels with join/leave)
 * @property {(member: Member) => void} [onLeave] someone left
 * @property {(info: UnsubscribedInfo) => void} [onUnsubscribed] the subscription ended, for
 *   any reason (called once)
 * @property {(error: WiremeshError) => void} [onError] the gateway refused this subscription,
 *   or subscribing again failed (the client tries again when the failure is temporary)
 * @property {boolean} [recover=true] after a reconnection, ask for what was missed since the
 *   last position
 * @property {Position} [since] a position to recover from on the first subscribe (one the
 *   page kept from an earlier visit)
 */

/**
 * The {@link WiremeshError} kind of a channel reply code: "bad_request" (4400), "forbidden"
 * (4403), "no_channel" (4404), "already_subscribed" (4409), "too_big" (4413),
 * "rate_limited" (4429), "unavailable" (4503), "remote" for any other.
 * @param {number} code
 * @returns {ErrorKind}
 */
export function channelErrorKind(code) {
  return CHANNEL_ERROR_KINDS.get(code) ?? "remote";
}

/**
 * The position a gateway message (or a position given by the page) names: a positive safe
 * integer offset, else 0, and a string epoch, else "".
 * @param {{offset?: unknown, epoch?: unknown} | undefined} value
 * @returns {Position}
 */
export function readPosition(value) {
  const offset = value?.offset;
  const epoch = value?.epoch;
  return {
    offset: typeof offset === "number" && Number.isSafeInteger(offset) && offset > 0 ? offset : 0,
    epoch: typeof epoch === "string" ? epoch : "",
  };
}

/**
 * Whether a position is worth recovering from: it saw a publication (offset > 0) or at least
 * knows the channel's epoch.
 * @param {Position | undefined} position
 * @returns {boolean}
 */
export function hasPosition(position) {
  return Boolean(position) && (position.offset > 0 || Boolean(position.epoch));
}

/**
 * The `subscribe` message for `channel`: with `since` when `recover` is asked for and the
 * position is worth recovering from ({@link hasPosition}).
 * @param {string} channel
 * @param {number} id the request id
 * @param {Position} [position] the subscription's last position
 * @param {boolean} [recover=true]
 * @returns {{wm: "subscribe", channel: string, id: number, since?: Position}}
 */
export function subscribeMessage(channel, id, position, recover = true) {
  /** @type {{wm: "subscribe", channel: string, id: number, since?: Position}} */
  const message = { wm: "subscribe", channel, id };
  if (recover && position && hasPosition(position)) {
    message.since = { offset: position.offset, epoch: position.epoch };
  }
  return message;
}

/**
 * Whether to deliver a publication (a `pub` message, or a recovered one with its epoch) to
 * a subscription at `position`, and the position after it. A publication without offset (a
 * channel without history) is always delivered and moves nothing; one of another epoch
 * starts the position again; one at or before the position is a duplicate.
 * @param {Position} position
 * @param {{offset?: unknown, epoch?: unknown}} publication
 * @returns {{deliver: boolean, position: Position}}
 */
export function acceptPublication(position, publication) {
  const next = readPosition(publication);
  if (next.offset === 0) return { deliver: true, position };
  if (next.epoch !== position.epoch) return { deliver: true, position: next };
  if (next.offset <= position.offset) return { deliver: false, position };
  return { deliver: true, position: next };
}

/**
 * What a `subscribed` answer means for a subscription at `position`: the recovered
 * publications to deliver, in offset order and without duplicates (each with the answer's
 * epoch), then the position to continue from: the channel's position when the subscription
 * began, or the last recovered publication if that is further.
 * @param {Position} position
 * @param {{offset?: unknown, epoch?: unknown, recovered?: unknown, reason?: unknown,
 *   publications?: unknown}} message
 * @returns {{publications: Array<{offset: number, epoch: string, data: any}>,
 *   position: Position, recovered: boolean, reason: RecoveryReason}}
 */
export function planSubscribed(position, message) {
  const start = readPosition(message);
  const recovered = message.recovered === true;
  const reason = /** @type {RecoveryReason} */ (
    !recovered && typeof message.reason === "string" ? message.reason : ""
  );
  /** @type {Array<{offset: number, epoch: string, data: any}>} */
  const publications = [];
  let current = position;
  if (recovered && Array.isArray(message.publications)) {
    const ordered = message.publications
      .filter((item) => item !== null && typeof item === "object")
      .map((item) => ({ ...readPosition({ offset: item.offset, epoch: start.epoch }), data: item.data }))
      .sort((a, b) => a.offset - b.offset);
    for (const publication of ordered) {
      const step = acceptPublication(current, publication);
      current = step.position;
      if (step.deliver) publications.push(publication);
    }
  }
  // Without recovery, what came before the subscription began is history, not news.
  if (!recovered || start.epoch !== current.epoch || start.offset > current.offset) current = start;
  return { publications, position: current, recovered, reason };
}

/**
 * The {@link WiremeshError} of a gateway's `{"wm": "error"}` answer.
 * @param {{code?: unknown, reason?: unknown, channel?: unknown}} message
 * @returns {WiremeshError}
 */
export function channelError(message) {
  const code = typeof message.code === "number" ? message.code : 0;
  const channel = typeof message.channel === "string" ? message.channel : undefined;
  const reason =
    typeof message.reason === "string" && message.reason
      ? message.reason
      : `the gateway refused${channel === undefined ? "" : ` (${channel})`} with code ${code}`;
  return new WiremeshError(channelErrorKind(code), reason, { code, channel });
}

// ------------------------------------------------------------------------ a subscription

/**
 * Call an application callback; its exceptions must not break the connection (they are
 * rethrown on their own turn, where the page's error handlers see them).
 * @param {Function | undefined} callback
 * @param {...any} args
 */
function notify(callback, ...args) {
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
 * One channel subscription of a {@link Connection}: made by {@link Connection#subscribe}, or
 * by the node (`origin` "node"; its publications go to the connection's `onPublication`
 * until a page sets `onMessage`). It lives until it is unsubscribed, refused, or the
 * connection closes for good; across reconnections the client subscribes again by itself
 * and recovers what was missed (see {@link SubscribeOptions}). The handlers are properties
 * and may be replaced at any time.
 */
export class Subscription {
  /**
   * @param {Connection} connection
   * @param {string} channel
   * @param {SubscribeOptions} options
   * @param {"page" | "node"} origin who subscribed: the page, or the node for the session
   */
  constructor(connection, channel, options, origin) {
    /** @type {Connection} */
    this.connection = connection;
    /** @type {string} */
    this.channel = channel;
    /** @type {"page" | "node"} */
    this.origin = origin;
    /** Whether to recover what was missed after a reconnection. @type {boolean} */
    this.recover = options.recover ?? true;
    /** The position of the last publication seen (a new object at every change: keep it to
     * recover from on a later visit with `since`). @type {Position} */
    this.position = readPosition(options.since);
    /** @type {SubscriptionState} */
    this.state = "subscribing";
    /** @type {((data: any, info: PublicationInfo) => void) | undefined} */
    this.onMessage = options.onMessage;
    /** @type {((info: SubscribedInfo) => void) | undefined} */
    this.onSubscribed = options.onSubscribed;
    /** @type {((member: Member) => void) | undefined} */
    this.onJoin = options.onJoin;
    /** @type {((member: Member) => void) | undefined} */
    this.onLeave = options.onLeave;
    /** @type {((info: UnsubscribedInfo) => void) | undefined} */
    this.onUnsubscribed = options.onUnsubscribed;
    /** @type {((error: WiremeshError) => void) | undefined} */
    this.onError = options.onError;
    /** @private @type {(info: SubscribedInfo) => void} */ this._resolve = () => {};
    /** @private @type {(error: Error) => void} */ this._reject = () => {};
    /**
     * Resolves on the first `subscribed` answer; rejects with a {@link WiremeshError} when
     * the gateway refuses (its `kind` names the reply code), on no answer in time
     * ("timeout"), or when the subscription ends before it held ("closed").
     * @type {Promise<SubscribedInfo>}
     */
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // a page that never awaits it must not see an unhandled rejection
    /** @private */ this._settled = false;
    /** Whether it held at least once: later subscribes are resubscriptions. @private */
    this._held = false;
    /** The id of the subscribe in flight, if any. @private @type {number | undefined} */
    this._requestId = undefined;
    /** The connection's session its last subscribe went out on. @private */
    this._session = 0;
    /** Publications that came while the subscribe waited for its answer.
     * @private @type {object[]} */
    this._waiting = [];
    /** @private */ this._retries = 0;
    /** @private @type {any} */ this._retryTimer = undefined;
  }

  /**
   * Leave the channel (see {@link Connection#unsubscribe}).
   * @param {{timeout?: number}} [options]
   * @returns {Promise<void>}
   */
  unsubscribe(options) {
    if (this.connection.subscriptions.get(this.channel) !== this) return Promise.resolve();
    return this.connection.unsubscribe(this.channel, options);
  }

  /**
   * Publish to the channel (see {@link Connection#publish}).
   * @param {any} data any JSON value
   * @param {{timeout?: number}} [options]
   * @returns {Promise<Position>}
   */
  publish(data, options) {
    return this.connection.publish(this.channel, data, options);
  }

  /**
   * Who is subscribed to the channel now (see {@link Connection#presence}).
   * @param {{timeout?: number}} [options]
   * @returns {Promise<Member[]>}
   */
  presence(options) {
    return this.connection.presence(this.channel, options);
  }

  // -------------------------------------------------------------------- internals
  // Called by the connection, which routes the gateway's messages here.

  /**
   * A subscribe went out with `id` on the connection's `session`.
   * @internal
   * @param {number} id
   * @param {number} session
   */
  _sent(id, session) {
    this._requestId = id;
    this._session = session;
    this._waiting = [];
  }

  /**
   * The subscription holds: deliver what was recovered, then what arrived meanwhile.
   * @internal
   * @param {object} message the `subscribed` message
   */
  _subscribed(message) {
    const plan = planSubscribed(this.position, message);
    const start = readPosition(message);
    /** @type {SubscribedInfo} */
    const info = {
      channel: this.channel,
      offset: start.offset,
      epoch: start.epoch,
      recovered: plan.recovered,
      reason: plan.reason,
      resubscribed: this._held,
      publications: plan.publications.length,
    };
    this._held = true;
    this._retries = 0;
    this._requestId = undefined;
    this.state = "subscribed";
    this.position = plan.position;
    const waiting = this._waiting;
    this._waiting = [];
    if (!this._settled) {
      this._settled = true;
      this._resolve(info);
    }
    notify(this.onSubscribed, info);
    for (const publication of plan.publications) {
      if (this.state !== "subscribed") return; // a handler unsubscribed
      const { offset, epoch } = publication;
      this._deliver(publication.data, { channel: this.channel, offset, epoch, recovered: true });
    }
    for (const pub of waiting) {
      if (this.state !== "subscribed") return;
      this._publication(pub);
    }
  }

  /**
   * A `pub` message: delivered unless it is a duplicate; kept while the subscribe waits for
   * its answer, so that recovered publications come first.
   * @internal
   * @param {{offset?: unknown, epoch?: unknown, data?: any}} message
   */
  _publication(message) {
    if (this.state === "subscribing") {
      if (this._waiting.length < MAX_HELD_PUBLICATIONS) this._waiting.push(message);
      return;
    }
    if (this.state !== "subscribed") return;
    const step = acceptPublication(this.position, message);
    this.position = step.position;
    if (!step.deliver) return;
    const { offset, epoch } = readPosition(message);
    this._deliver(message.data, { channel: this.channel, offset, epoch, recovered: false });
  }

  /**
   * @private
   * @param {any} data
   * @param {PublicationInfo} info
   */
  _deliver(data, info) {
    if (this.onMessage) notify(this.onMessage, data, info);
    else notify(this.connection.onPublication, this.channel, data, info);
  }

  /**
   * The connection was lost: the next session subscribes again (what arrived unanswered is
   * recovered then).
   * @internal
   */
  _lost() {
    if (this.state === "unsubscribed") return;
    this.state = "subscribing";
    this._requestId = undefined;
    this._waiting = [];
    clearTimeout(this._retryTimer);
  }

  /**
   * Try the subscribe again after `delay` ms, if still wanted then.
   * @internal
   * @param {number} delay
   * @param {() => void} again
   */
  _retryLater(delay, again) {
    this._requestId = undefined;
    this._retries += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(again, delay);
  }

  /**
   * The subscription ended (called once; the connection has forgotten it).
   * @internal
   * @param {UnsubscribedInfo} info
   * @param {WiremeshError} [error] rejects `ready` if it had not settled
   * @param {boolean} [refused=false] whether `error` is a refusal, for `onError` too
   */
  _end(info, error, refused = false) {
    if (this.state === "unsubscribed") return;
    this.state = "unsubscribed";
    this._requestId = undefined;
    this._waiting = [];
    clearTimeout(this._retryTimer);
    if (!this._settled) {
      this._settled = true;
      this._reject(
        error ??
          new WiremeshError(
            "closed",
            `the subscription to ${this.channel} ended before it held (${info.reason})`,
            { code: info.code, channel: this.channel },
          ),
      );
    }
    if (error && refused) notify(this.onError, error);
    notify(this.onUnsubscribed, info);
  }
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
    /** @type {((channel: string, data: any, info: PublicationInfo) => void) | undefined} */
    this.onPublication = options.onPublication;
    /** The live channel subscriptions, by channel. Read it; change it through
     * {@link Connection#subscribe} and {@link Connection#unsubscribe}.
     * @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
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
    /** Channel requests sent and not yet answered, by id (the same ids as `_pending`'s).
     * @private @type {Map<number, {expects: string, answer: (message: any) => void, fail: (error: WiremeshError) => void, timer: any}>} */
    this._channelRequests = new Map();
    /** How many sessions opened so far (a subscribe belongs to one). @private */
    this._session = 0;
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

  /** Requests sent and not yet answered (request/reply and channel requests). */
  get pendingRequests() {
    return this._pending.size + this._channelRequests.size;
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
   * Subscribe to a channel. The subscription starts at once when the session is open, or
   * at the next open; after every reconnection the client subscribes again by itself and,
   * with `recover`, asks for what was missed since the last position: those publications
   * come through `onMessage` first, in order, without duplicates, and `onSubscribed` says
   * `{recovered: false, reason}` when what was missed cannot be told (reload the state).
   * Throws a {@link WiremeshError} of kind "already_subscribed" when this connection has a
   * subscription to `channel` already, "bad_argument" for a bad name or `since`, "closed"
   * when the connection is closed.
   * @param {string} channel
   * @param {SubscribeOptions} [options]
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== "string" || channel === "") {
      throw new WiremeshError("bad_argument", "subscribe() needs a channel name");
    }
    const since = options.since;
    if (since !== undefined) {
      const position = readPosition(since);
      if (position.offset !== since?.offset || position.epoch !== (since.epoch ?? "")) {
        throw new WiremeshError("bad_argument", "since is {offset: a whole number >= 0, epoch: a string}");
      }
    }
    if (this.state === "closed") throw this._closedError();
    const existing = this.subscriptions.get(channel);
    if (existing) {
      const hint =
        existing.origin === "node"
          ? "the node subscribed this session to it: set handlers on connection.subscriptions.get(channel)"
          : "unsubscribe first, or keep using the Subscription that subscribe() returned";
      throw new WiremeshError(
        "already_subscribed",
        `already subscribed to ${channel} on this connection (${hint})`,
        { code: ChannelCode.ALREADY_SUBSCRIBED, channel },
      );
    }
    const subscription = new Subscription(this, channel, options, "page");
    this.subscriptions.set(channel, subscription);
    if (this.state === "open") this._sendSubscribe(subscription);
    return subscription;
  }

  /**
   * Leave a channel. The subscription ends at once (`onUnsubscribed` with code 1000, no more
   * publications); the promise resolves when the gateway confirms, at once when the session
   * is not open (a new session starts without it), and when the connection drops first.
   * Rejects with kind "timeout" or the kind of the gateway's refusal.
   * @param {string} channel
   * @param {{timeout?: number}} [options]
   * @returns {Promise<void>}
   */
  unsubscribe(channel, { timeout } = {}) {
    const subscription = this.subscriptions.get(channel);
    if (!subscription) return Promise.resolve();
    // a subscribe in flight on this session may still succeed: unsubscribe follows it
    const onGateway =
      this.state === "open" &&
      (subscription.state === "subscribed" || subscription._requestId !== undefined);
    this._forget(subscription, { code: CloseCode.NORMAL, reason: "unsubscribed by the page" });
    if (!onGateway) return Promise.resolve();
    return this._channelRequest({ wm: "unsubscribe", channel }, "unsubscribed", timeout).then(
      () => undefined,
      (error) => {
        if (error.kind !== "closed") throw error; // closed: the session and its subscriptions are gone
      },
    );
  }

  /**
   * Publish `data` (any JSON value) to a channel whose rules allow browsers to publish,
   * while subscribed to it. Resolves with the publication's position once the gateway
   * accepted it (the publication also comes back through `onMessage`); rejects with a
   * {@link WiremeshError} of kind "forbidden", "too_big", "rate_limited", ... (the gateway's
   * refusal), "timeout", "closed" or "not_open": publications are never queued.
   * @param {string} channel
   * @param {any} data
   * @param {{timeout?: number}} [options]
   * @returns {Promise<Position>}
   */
  publish(channel, data, { timeout } = {}) {
    let text;
    try {
      text = JSON.stringify(data);
    } catch {
      text = undefined;
    }
    if (text === undefined) {
      return Promise.reject(new WiremeshError("bad_argument", "publish a JSON value", { channel }));
    }
    return this._channelRequest({ wm: "publish", channel, data }, "published", timeout).then(
      readPosition,
    );
  }

  /**
   * Who is subscribed to a channel now (while subscribed, on channels that keep presence).
   * Rejects like {@link Connection#publish}.
   * @param {string} channel
   * @param {{timeout?: number}} [options]
   * @returns {Promise<Member[]>}
   */
  presence(channel, { timeout } = {}) {
    return this._channelRequest({ wm: "presence", channel }, "presence", timeout).then(
      (message) => (Array.isArray(message.members) ? message.members : []),
    );
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
      if (!this._pending.has(id) && !this._channelRequests.has(id)) return id;
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
    notify(callback, ...args);
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
      this._session += 1;
      this._setState("open");
      this._readExpiry(token);
      this._stableTimer = setTimeout(() => {
        this._attempt = 0;
      }, this._options.stableAfter ?? 5000);
      const waiters = this._openWaiters.splice(0);
      for (const waiter of waiters) waiter.resolve();
      this._resubscribe();
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
    this._loseChannels();
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
    if (this._channelMessage(message)) return;
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
    if (typeof exp === "number") this._scheduleRefresh(exp, true);
  }

  /**
   * Refresh by ourselves `refreshBefore` seconds ahead of `exp`, in case the gateway's
   * notice does not come; a refresh that is already running absorbs the second trigger.
   * A session that opens with a token already that close to `exp` (`opening`) refreshes
   * at once; a refreshed token that is itself that short-lived waits for the gateway's
   * notice (no refresh after refresh).
   * @private
   * @param {number} exp
   * @param {boolean} [opening]
   */
  _scheduleRefresh(exp, opening = false) {
    this.expires = exp;
    clearTimeout(this._refreshTimer);
    if (!this._options.getToken) return;
    const due = (exp - (this._options.refreshBefore ?? 30)) * 1000 - Date.now();
    if (due <= 0) {
      if (opening && exp * 1000 > Date.now()) this.refreshToken().catch(() => {});
      return; // else the gateway's notice (or the 4001 close) will come
    }
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

  // -------------------------------------------------------------------- channels

  /**
   * Send one control message (a text frame).
   * @private
   * @param {object} message
   */
  _sendText(message) {
    if (this.state !== "open" || !this._socket) {
      throw new WiremeshError("not_open", `cannot send: the connection is ${this.state}`);
    }
    this._socket.send(JSON.stringify(message));
  }

  /**
   * Send a channel request with `id`; exactly one of `answer` (the gateway's answer of type
   * `expects`) and `fail` (its refusal, a timeout, the connection closing) is called.
   * @private
   * @param {number} id
   * @param {{wm: string, channel: string} & Record<string, any>} message with `id` set
   * @param {string} expects the `wm` of the answer
   * @param {(message: any) => void} answer
   * @param {(error: WiremeshError) => void} fail
   * @param {number} [timeout]
   */
  _sendChannelRequest(id, message, expects, answer, fail, timeout) {
    const ms = timeout ?? this._options.requestTimeout ?? 10000;
    const timer = setTimeout(() => {
      this._channelRequests.delete(id);
      const what = `${message.wm} ${message.channel}`;
      fail(new WiremeshError("timeout", `no answer to ${what} within ${ms} ms`, { channel: message.channel }));
    }, ms);
    this._channelRequests.set(id, { expects, answer, fail, timer });
    try {
      this._sendText(message);
    } catch (error) {
      clearTimeout(timer);
      this._channelRequests.delete(id);
      fail(/** @type {WiremeshError} */ (error));
    }
  }

  /**
   * A channel request as a promise of its answer.
   * @private
   * @param {{wm: string, channel: string} & Record<string, any>} fields
   * @param {string} expects
   * @param {number} [timeout]
   * @returns {Promise<any>}
   */
  _channelRequest(fields, expects, timeout) {
    if (typeof fields.channel !== "string" || fields.channel === "") {
      return Promise.reject(new WiremeshError("bad_argument", `${fields.wm} needs a channel name`));
    }
    if (this.state !== "open") {
      return Promise.reject(
        new WiremeshError("not_open", `cannot ${fields.wm}: the connection is ${this.state}`, {
          channel: fields.channel,
        }),
      );
    }
    return new Promise((resolve, reject) => {
      const id = this._allocateId();
      this._sendChannelRequest(id, { ...fields, id }, expects, resolve, reject, timeout);
    });
  }

  /**
   * Subscribe on this session: from the position when it is worth it (always on a first
   * subscribe given `since`, after a reconnection only with `recover`).
   * @private
   * @param {Subscription} subscription
   */
  _sendSubscribe(subscription) {
    const id = this._allocateId();
    const recover = subscription._held ? subscription.recover : true;
    const message = subscribeMessage(subscription.channel, id, subscription.position, recover);
    subscription._sent(id, this._session);
    this._sendChannelRequest(
      id,
      message,
      "subscribed",
      (answer) => {
        if (this.subscriptions.get(subscription.channel) !== subscription) return; // ended meanwhile
        if (subscription._requestId === id) subscription._subscribed(answer);
      },
      (error) => this._subscribeFailed(subscription, id, error),
    );
  }

  /**
   * A new session is open: subscribe every live subscription again (those not yet sent on
   * it: a handler of `onStateChange` may have subscribed already).
   * @private
   */
  _resubscribe() {
    for (const subscription of [...this.subscriptions.values()]) {
      if (subscription.state === "subscribing" && subscription._session !== this._session) {
        this._sendSubscribe(subscription);
      }
    }
  }

  /**
   * A subscribe failed. A first subscribe ends with the error (the page is waiting on
   * `ready`); a resubscription tries again later when the failure is temporary (4503, no
   * answer in time), since no page is there to decide.
   * @private
   * @param {Subscription} subscription
   * @param {number} id
   * @param {WiremeshError} error
   */
  _subscribeFailed(subscription, id, error) {
    if (this.subscriptions.get(subscription.channel) !== subscription) return;
    if (subscription._requestId !== id) return; // an older attempt
    // closed: the next session subscribes again, or the connection ends it
    if (error.kind === "closed" || error.kind === "not_open") return;
    // already subscribed: the node subscribed the session meanwhile; its `subscribed` tells
    if (subscription.state === "subscribed" || error.kind === "already_subscribed") return;
    if (error.kind === "timeout" && this.state === "open") {
      // a late success must not leave the session subscribed: its answer (to an id nobody
      // waits for) is dropped, and a later subscribe starts from a clean slate
      try {
        this._sendText({ wm: "unsubscribe", channel: subscription.channel, id: this._allocateId() });
      } catch {
        // not open: nothing lingers
      }
    }
    const temporary = error.kind === "timeout" || error.kind === "unavailable";
    if (subscription._held && temporary) {
      notify(subscription.onError, error);
      const delay = backoffDelay(subscription._retries, this._options.backoff);
      subscription._retryLater(delay, () => {
        const wanted = this.subscriptions.get(subscription.channel) === subscription;
        if (wanted && this.state === "open" && subscription.state === "subscribing") {
          this._sendSubscribe(subscription);
        }
      });
      return;
    }
    const code = error.code ?? ChannelCode.UNAVAILABLE;
    this._forget(subscription, { code, reason: error.message }, error, true);
  }

  /**
   * Handle a channel message; false when `message` is not one (it goes to `onControl`).
   * @private
   * @param {Record<string, any>} message
   * @returns {boolean}
   */
  _channelMessage(message) {
    const wm = message.wm;
    const id = typeof message.id === "number" ? message.id : undefined;
    const channel = typeof message.channel === "string" ? message.channel : undefined;
    if (wm === "error") {
      if (channel === undefined && (id === undefined || !this._channelRequests.has(id))) return false;
    } else if (!CHANNEL_MESSAGES.has(wm)) {
      return false;
    }
    if (id !== undefined && wm !== "pub" && wm !== "join" && wm !== "leave") {
      // the answer to a request of this page; one that comes too late is dropped
      const request = this._channelRequests.get(id);
      if (request && (wm === "error" || wm === request.expects)) {
        this._channelRequests.delete(id);
        clearTimeout(request.timer);
        if (wm === "error") request.fail(channelError(message));
        else request.answer(message);
      }
      return true;
    }
    const subscription = channel === undefined ? undefined : this.subscriptions.get(channel);
    if (wm === "subscribed" && channel !== undefined) {
      this._subscribedByNode(channel, message);
    } else if (!subscription) {
      // a publication after the page unsubscribed, or a notice about no subscription: dropped
    } else if (wm === "pub") {
      subscription._publication(message);
    } else if (wm === "join") {
      notify(subscription.onJoin, message.member);
    } else if (wm === "leave") {
      notify(subscription.onLeave, message.member);
    } else if (wm === "unsubscribed") {
      const code = typeof message.code === "number" ? message.code : CloseCode.NORMAL;
      const reason = typeof message.reason === "string" ? message.reason : "";
      this._forget(subscription, { code, reason });
    } else if (wm === "error") {
      notify(subscription.onError, channelError(message));
    }
    return true;
  }

  /**
   * A `subscribed` without id: the node subscribed the session. For a channel the page did
   * not subscribe to, a subscription whose publications go to `onPublication`.
   * @private
   * @param {string} channel
   * @param {Record<string, any>} message
   */
  _subscribedByNode(channel, message) {
    let subscription = this.subscriptions.get(channel);
    if (!subscription) {
      subscription = new Subscription(this, channel, {}, "node");
      subscription._session = this._session;
      this.subscriptions.set(channel, subscription);
    } else if (subscription.state === "subscribed") {
      return; // it holds already: nothing new
    }
    subscription._subscribed(message);
  }

  /**
   * End a subscription and forget it.
   * @private
   * @param {Subscription} subscription
   * @param {UnsubscribedInfo} info
   * @param {WiremeshError} [error] rejects `ready` if it had not settled
   * @param {boolean} [refused=false] whether `error` is a refusal to report to `onError`
   */
  _forget(subscription, info, error, refused = false) {
    if (this.subscriptions.get(subscription.channel) === subscription) {
      this.subscriptions.delete(subscription.channel);
    }
    subscription._end(info, error, refused);
  }

  /**
   * The session ended: channel requests fail (subscriptions wait for the next session).
   * @private
   */
  _loseChannels() {
    for (const subscription of this.subscriptions.values()) subscription._lost();
    const requests = [...this._channelRequests.values()];
    this._channelRequests.clear();
    for (const { fail, timer } of requests) {
      clearTimeout(timer);
      fail(new WiremeshError("closed", "the connection closed before the answer"));
    }
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
    this._loseChannels();
    this.closeInfo = info;
    const closed = this._closedError();
    for (const subscription of [...this.subscriptions.values()]) {
      this._forget(subscription, { code: info.code, reason: "the connection is closed" }, closed);
    }
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
