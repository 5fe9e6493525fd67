// remodel-web browser client: live subscriptions and method calls multiplexed on one
// WebSocket per tab. Speaks the protocol described in src/protocol.rs. One ES module, no
// dependencies, no build step.

/** A connection that stayed live this long resets the reconnect backoff: it was not a flap. */
const STABLE_MS = 5000;
/** Assumed until the server's `hello` says otherwise (so the first pings go every 10 s). */
const DEFAULT_IDLE_MS = 30000;
/** The longest a timer can wait (setInterval takes a signed 32-bit delay). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Connection attempts refused in a row (never opened) before the page is told. */
const REFUSED_ATTEMPTS = 3;

/**
 * Opens the tab's connection to a remodel-web server.
 *
 * Documents and keys are parsed with `JSON.parse`: numbers are JavaScript numbers, so
 * integers beyond ±2^53 lose precision (two such keys can become one row): keep keys the
 * page sees within that range, or make them strings.
 * @param {{url?: string, minBackoffMs?: number, maxBackoffMs?: number, maxQueuedCalls?: number}} [options]
 *   `url` defaults to `ws(s)://<location.host>/remodel/ws` (wss when the page is https).
 *   `maxQueuedCalls` (default 20, the server's default calls per second): method calls made
 *   while disconnected wait for the connection, at most this many; more are rejected
 *   (`queue_full`).
 * @returns {Live}
 */
export function connect(options = {}) {
  return new Live(options);
}

/**
 * Escapes `& < > " '` so text from documents can be put into HTML; null/undefined give "".
 * @param {*} s
 * @returns {string}
 */
export function escapeHtml(s) {
  const map = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  return String(s ?? '').replace(/[&<>"']/g, (c) => map[c]);
}

/** Map key of a row key: its JSON, so that keys differing only in type (`"5"` and `5`,
 * `"null"` and `null`) stay distinct rows. */
const mapKey = (key) => JSON.stringify(key);

const offline = () => typeof navigator !== 'undefined' && navigator.onLine === false;

function callError(code, message) {
  const e = new Error(message ?? code);
  e.code = code ?? 'unknown';
  return e;
}

// Remodel's total order on JSON values (the server's, `remodel::value::compare`):
// arrays < booleans < null < numbers < objects < strings. Arrays element by element (a
// shorter prefix first), objects as their (key, value) pairs sorted by key, strings by code
// point (the order of their UTF-8 bytes), not by locale.
const rank = (v) => (Array.isArray(v) ? 0 : typeof v === 'boolean' ? 1 : v === null ? 2
  : typeof v === 'number' ? 3 : typeof v === 'string' ? 5 : 4);
// A UTF-16 code unit's place in code point order: surrogates (halves of the code points
// above U+FFFF) after every other unit.
const unitOrder = (u) => (u < 0xd800 ? u : u >= 0xe000 ? u - 0x800 : u + 0x2000);
function compareStrings(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i), y = b.charCodeAt(i);
    if (x !== y) return unitOrder(x) - unitOrder(y);
  }
  return a.length - b.length;
}
/**
 * Compares two JSON values in Remodel's total order (negative, 0 or positive), the order the
 * server sorts in: `values.sort(compare)`.
 * @param {*} a
 * @param {*} b
 * @returns {number}
 */
export function compare(a, b) { return compareValues(a, b); }

function compareValues(a, b) {
  const ra = rank(a), rb = rank(b);
  if (ra !== rb) return ra - rb;
  switch (ra) {
    case 0: { // arrays: element by element, then shorter first
      for (let i = 0; i < a.length && i < b.length; i++) {
        const c = compareValues(a[i], b[i]);
        if (c) return c;
      }
      return a.length - b.length;
    }
    case 1: return Number(a) - Number(b);
    case 2: return 0;
    case 3: return a < b ? -1 : a > b ? 1 : 0;
    case 4: { // objects: their pairs sorted by key, pair by pair, then fewer first
      const ka = Object.keys(a).sort(compareStrings), kb = Object.keys(b).sort(compareStrings);
      for (let i = 0; i < ka.length && i < kb.length; i++) {
        const c = compareStrings(ka[i], kb[i]) || compareValues(a[ka[i]], b[kb[i]]);
        if (c) return c;
      }
      return ka.length - kb.length;
    }
    default: return compareStrings(a, b);
  }
}

// The value at a dotted field path (`ship.name`), or undefined when a step is missing.
function valueAt(doc, path) {
  let cur = doc;
  for (const step of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return undefined;
    if (!Object.prototype.hasOwnProperty.call(cur, step)) return undefined;
    cur = cur[step];
  }
  return cur;
}

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    n += u < 0x80 ? 1 : u < 0x800 ? 2 : u >= 0xd800 && u < 0xdc00 ? (i++, 4) : 3;
  }
  return n;
}

/**
 * One live query. `rows` is always the current result in the publication's order.
 * @property {number} id
 * @property {string} name
 * @property {*} params
 * @property {Map<string, *>} byKey document by key (keyed by the key's JSON.stringify; use get(key))
 * @property {?{code: string, message: string}} error set once the server ended it
 * @property {?string} cursor the last cursor received, sent back when resubscribing
 */
class Subscription {
  constructor(live, id, name, params, onUpdate) {
    this.id = id;
    this.name = name;
    this.params = params;
    this.error = null;
    this.cursor = null;
    this.byKey = new Map();
    this._keys = new Map(); // map key -> original key, for keys() and the tie-break
    this._order = null; // [[field, "asc"|"desc"], ...] of the latest reset
    this._sorted = null; // cached [key, doc] pairs in order; null when stale
    this._live = live;
    this._onUpdate = onUpdate;
    this._closed = false;
  }

  /** @returns {Array<[*, *]>} `[key, document]` pairs in order. */
  entries() {
    if (!this._sorted) {
      // As the server orders: by each field in turn (rows that lack it after those that
      // have it, in either direction), then by key, descending when the first field is.
      const order = this._order || [];
      const keyDir = order.length && order[0][1] === 'desc' ? -1 : 1;
      this._sorted = [...this._keys.entries()]
        .map(([mk, key]) => [key, this.byKey.get(mk)])
        .sort(([ka, da], [kb, db]) => {
          for (const [field, dir] of order) {
            const va = valueAt(da, field), vb = valueAt(db, field);
            if (va === undefined || vb === undefined) {
              if (va !== vb) return va === undefined ? 1 : -1;
              continue;
            }
            const c = compareValues(va, vb);
            if (c) return dir === 'desc' ? -c : c;
          }
          return keyDir * compareValues(ka, kb);
        });
    }
    return this._sorted;
  }
  /** @returns {Array<*>} the documents, in order. */
  get rows() { return this.entries().map((e) => e[1]); }
  /** @returns {Array<*>} the keys, in order. */
  keys() { return this.entries().map((e) => e[0]); }
  /** @returns {*} the document of `key`, or undefined. */
  get(key) { return this.byKey.get(mapKey(key)); }

  /** Ends the subscription: tells the server (when connected) and forgets it. */
  close() {
    if (this._closed) return;
    this._closed = true;
    const live = this._live;
    if (live._subs.get(this.id) === this) {
      live._subs.delete(this.id);
      live._send({ op: 'unsub', id: this.id });
    }
  }

  _set(key, doc) {
    const mk = mapKey(key);
    if (doc == null) { this.byKey.delete(mk); this._keys.delete(mk); }
    else { this.byKey.set(mk, doc); this._keys.set(mk, key); }
  }
  _reset(msg) {
    checkRows(msg.rows);
    this.byKey.clear();
    this._keys.clear();
    this._order = Array.isArray(msg.order) ? msg.order : null;
    for (const [key, doc] of msg.rows) this._set(key, doc);
    // A large result continues in `more` frames: shown once whole (a part was never a
    // result), and its cursor holds only then (a reconnect in between starts afresh).
    this._partial = msg.more === true;
    this._pendingCursor = msg.cursor ?? null; // null: the feed cannot resume
    if (this._partial) this.cursor = null;
    else this._whole();
  }
  _more(msg) {
    if (!this._partial) return; // not inside a reset: ignore
    checkRows(msg.rows);
    for (const [key, doc] of msg.rows) this._set(key, doc);
    this._partial = msg.more === true;
    if (!this._partial) this._whole();
  }
  _whole() {
    this.cursor = this._pendingCursor;
    this._changed();
  }
  _change(msg) {
    checkRows(msg.rows);
    for (const [key, doc] of msg.rows) this._set(key, doc);
    // A large change comes in parts: shown after the last, which carries the cursor.
    if (msg.more === true) return;
    if ('cursor' in msg) this.cursor = msg.cursor;
    this._changed();
  }
  _end(msg) {
    this._live._subs.delete(this.id); // never resubscribed, later messages ignored
    this.error = { code: msg.error?.code ?? 'unknown', message: msg.error?.message ?? '' };
    this.byKey.clear();
    this._keys.clear();
    this._changed();
  }
  _changed() {
    this._sorted = null;
    if (!this._onUpdate) return;
    // A throwing page callback must not break the message loop (or other subscriptions).
    try { this._onUpdate(this.rows, this); } catch (e) { console.error('remodel: onUpdate threw', e); }
  }
}

// Validate before mutating, so a malformed frame leaves the subscription as it was.
function checkRows(rows) {
  if (!Array.isArray(rows) || !rows.every((r) => Array.isArray(r) && r.length === 2)) {
    throw new Error('rows must be [key, document] pairs');
  }
}

/**
 * The tab's connection. `state` is "connecting" | "live" | "reconnecting" | "offline".
 */
class Live {
  constructor(options) {
    this.url = options.url ?? defaultUrl();
    this._minBackoff = options.minBackoffMs ?? 250;
    this._maxBackoff = options.maxBackoffMs ?? 10000;
    this._state = null;
    this._stateFns = new Set();
    this._errorFns = new Set();
    this._subs = new Map(); // id -> open Subscription
    this._nextSub = 1;
    this._calls = new Map(); // id -> {frame, text, resolve, reject, sent}; unsent ones are queued
    this._nextCall = 1;
    this._maxQueued = options.maxQueuedCalls ?? 20;
    this._maxFrame = null; // the server's frame limit, once a `hello` said it
    this._refused = 0; // attempts in a row that closed before they opened
    this._ws = null;
    this._isLive = false; // the socket is open and the server said hello
    this._everLive = false; // tells "connecting" from "reconnecting"
    this._closed = false;
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._idleMs = DEFAULT_IDLE_MS;
    this._pingSentAt = 0; // time of the oldest ping not followed by any message; 0 if none
    this._lastRecv = 0;
    this._openedAt = 0;
    // The network is back: don't sit out the backoff.
    this._onOnline = () => {
      this._attempt = 0;
      if (!this._ws && !this._closed) this._open();
      else this._updateState();
    };
    // The network is gone: the socket is dead even if the browser has not noticed yet.
    this._onOffline = () => { if (this._ws) this._drop(); else this._updateState(); };
    if (typeof window !== 'undefined' && window.addEventListener) {
      window.addEventListener('online', this._onOnline);
      window.addEventListener('offline', this._onOffline);
    }
    this._open();
  }

  /** @returns {"connecting"|"live"|"reconnecting"|"offline"} */
  get state() { return this._state; }

  /**
   * Subscribes to the publication `name`.
   * @param {string} name
   * @param {object} [params]
   * @param {(rows: Array<*>, sub: Subscription) => void} [onUpdate] called after each reset, change or end
   * @returns {Subscription}
   */
  subscribe(name, params = {}, onUpdate) {
    const sub = new Subscription(this, this._nextSub++, name, params, onUpdate);
    // Written once here, so that parameters JSON cannot hold (a BigInt, a cycle) throw to
    // the caller rather than on every reconnect.
    sub._frame = JSON.stringify({ op: 'sub', id: sub.id, name, params });
    if (this._closed) sub.error = { code: 'closed', message: 'the connection was closed' };
    else if (this._tooLarge(sub._frame)) {
      // Said through `onUpdate` too, as a refusal from the server would be (after this
      // call returns, so that the page holds the subscription when it hears of it).
      sub.error = this._tooLargeError();
      queueMicrotask(() => { if (!sub._closed) sub._changed(); });
    } else { this._subs.set(sub.id, sub); this._sendSub(sub); }
    return sub;
  }

  /**
   * Calls the method `name`. Waits for the connection when disconnected; never retried.
   * @param {string} name
   * @param {object} [params]
   * @returns {Promise<*>} the `ok` value; rejects with an Error carrying `.code`
   *   ("disconnected" if the connection dropped before the answer: it may or may not have run)
   */
  call(name, params = {}) {
    if (this._closed) return Promise.reject(callError('closed', 'the connection was closed'));
    const id = this._nextCall++;
    let text;
    try { text = JSON.stringify({ op: 'call', id, name, params }); } catch (e) {
      return Promise.reject(callError('bad_params', `the parameters are not JSON: ${e.message}`));
    }
    if (this._tooLarge(text)) {
      const e = this._tooLargeError();
      return Promise.reject(callError(e.code, e.message));
    }
    if (!this._isLive) {
      let queued = 0;
      for (const c of this._calls.values()) if (!c.sent) queued++;
      if (queued >= this._maxQueued) {
        return Promise.reject(callError('queue_full',
          `${queued} method calls already wait for the connection`));
      }
    }
    return new Promise((resolve, reject) => {
      const c = { text, resolve, reject, sent: false };
      this._calls.set(id, c);
      if (this._isLive) { c.sent = true; this._sendText(c.text); }
    });
  }

  // Only once the server said its limit: before that, the server decides (a frame it
  // refuses closes the connection, and after the reconnect the limit is known).
  _tooLarge(text) { return this._maxFrame != null && utf8Length(text) > this._maxFrame; }
  _tooLargeError() {
    return { code: 'frame_too_large', message: `frames are at most ${this._maxFrame} bytes` };
  }

  /** @param {(state: string) => void} fn @returns {() => void} unsubscribe */
  onState(fn) { this._stateFns.add(fn); return () => this._stateFns.delete(fn); }

  /** @param {(error: {code: string, message: string}) => void} fn @returns {() => void} unsubscribe */
  onError(fn) { this._errorFns.add(fn); return () => this._errorFns.delete(fn); }

  /** Closes for good: no reconnect; pending calls are rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    if (typeof window !== 'undefined' && window.removeEventListener) {
      window.removeEventListener('online', this._onOnline);
      window.removeEventListener('offline', this._onOffline);
    }
    clearTimeout(this._retryTimer);
    this._drop(); // rejects the calls in flight with "disconnected"
    for (const c of this._calls.values()) c.reject(callError('closed', 'the connection was closed'));
    this._calls.clear();
    this._subs.clear();
    this._updateState();
  }

  _open() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    let ws;
    try { ws = new WebSocket(this.url); } catch (e) {
      console.warn('remodel: cannot open', this.url, e);
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    // Handlers check `ws === this._ws`: events of a socket we already gave up on are ignored.
    ws.onopen = () => { if (ws === this._ws) this._onOpen(); };
    ws.onmessage = (ev) => { if (ws === this._ws) this._onMessage(ev.data); };
    ws.onclose = () => { if (ws === this._ws) this._drop(); };
    this._updateState();
  }

  _onOpen() {
    this._refused = 0;
    this._openedAt = this._lastRecv = Date.now();
    this._idleMs = DEFAULT_IDLE_MS;
    this._maxFrame = null; // this server's, said by its `hello`
    this._startPing();
  }

  // The server said hello: the connection is live. Every open subscription resumes under
  // its id, from its last cursor, and the queued calls go out, each checked against the
  // limit the hello said.
  _onHello() {
    this._isLive = this._everLive = true;
    // (A copy: a subscription ended here may make the page close others, which are then
    // not sent.)
    for (const sub of [...this._subs.values()]) if (this._subs.get(sub.id) === sub) this._sendSub(sub);
    for (const [id, c] of this._calls) {
      if (c.sent) continue;
      if (this._tooLarge(c.text)) {
        this._calls.delete(id);
        const e = this._tooLargeError();
        c.reject(callError(e.code, e.message));
        continue;
      }
      c.sent = true;
      this._sendText(c.text);
    }
    this._updateState();
  }

  // The socket is gone (closed, silent, or the network went away): clean up and retry.
  _drop() {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    this._isLive = false;
    this._maxFrame = null; // the next server says its own
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(); } catch { /* already closing */ }
    clearInterval(this._pingTimer);
    // Closed before it ever opened, again and again: the server refuses this page (its
    // origin, or who is signed in) or is not there. The browser does not say which.
    if (!this._openedAt && !this._closed && !offline() && ++this._refused === REFUSED_ATTEMPTS) {
      this._emitError({ code: 'connect_failed',
        message: `the server did not accept the connection (${REFUSED_ATTEMPTS} attempts); still trying` });
    }
    if (this._openedAt && Date.now() - this._openedAt >= STABLE_MS) this._attempt = 0;
    this._openedAt = 0;
    for (const [id, c] of this._calls) {
      if (!c.sent) continue; // still queued: it goes out on the next connection
      this._calls.delete(id);
      c.reject(callError('disconnected', 'the connection dropped before the answer'));
    }
    if (!this._closed) this._scheduleReconnect();
    this._updateState();
  }

  _scheduleReconnect() {
    clearTimeout(this._retryTimer);
    // Exponential backoff, half of it random so that tabs do not reconnect in lockstep. While
    // offline, still try slowly: navigator.onLine can be wrong (e.g. a server on localhost).
    const base = Math.min(this._maxBackoff, this._minBackoff * 2 ** this._attempt++);
    const delay = offline() ? this._maxBackoff : base / 2 + (Math.random() * base) / 2;
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _startPing() {
    clearInterval(this._pingTimer);
    this._pingSentAt = 0;
    this._pingTimer = setInterval(() => this._tick(), Math.min(this._idleMs / 3, MAX_TIMER_MS));
  }

  _tick() {
    const now = Date.now();
    const unanswered = this._pingSentAt && this._lastRecv < this._pingSentAt;
    // Measured from the ping, not from the last message, so a tab whose timers were throttled
    // is not judged dead for pings it never sent.
    if (unanswered && now - this._pingSentAt >= this._idleMs * 1.5) {
      console.warn('remodel: no answer to ping, reconnecting');
      this._drop();
      return;
    }
    if (!unanswered) this._pingSentAt = now;
    // On the open socket, live or not yet (a server that never says hello is found dead).
    try { this._ws?.send(JSON.stringify({ op: 'ping' })); } catch { /* closing */ }
  }

  _sendSub(sub) {
    let text = sub._frame;
    if (sub.cursor != null) text = `${text.slice(0, -1)},"cursor":${JSON.stringify(sub.cursor)}}`;
    // Sent again on every reconnect: one the server would refuse (it closes the connection
    // on it) ends here instead of in a loop of reconnects.
    if (this._tooLarge(text)) { sub._end({ error: this._tooLargeError() }); return; }
    this._sendText(text);
  }

  // Frames are only sent on an open socket; subscriptions and calls are replayed on open.
  _send(frame) { this._sendText(JSON.stringify(frame)); }
  _sendText(text) {
    if (this._isLive) this._ws.send(text);
  }

  _onMessage(data) {
    this._lastRecv = Date.now(); // any message proves the socket alive
    let msg;
    try { msg = JSON.parse(data); } catch {
      console.warn('remodel: unparsable frame', data);
      return;
    }
    try { this._dispatch(msg); } catch (e) { console.warn('remodel: bad frame', msg, e); }
  }

  _dispatch(msg) {
    switch (msg?.t) {
      case 'hello':
        if (typeof msg.max_frame_bytes === 'number' && msg.max_frame_bytes > 0) {
          this._maxFrame = msg.max_frame_bytes;
        }
        if (typeof msg.idle_ms === 'number' && msg.idle_ms > 0) {
          this._idleMs = msg.idle_ms;
          this._startPing();
        }
        if (!this._isLive) this._onHello();
        return;
      case 'pong':
        return;
      case 'batch':
        // Several frames in one message, in order, as if each had come alone; one that
        // fails does not stop the others. A batch holds no batch.
        if (!Array.isArray(msg.frames)) throw new Error('a batch carries frames');
        for (const frame of msg.frames) {
          if (frame?.t === 'batch') continue;
          try { this._dispatch(frame); } catch (e) { console.warn('remodel: bad frame', frame, e); }
        }
        return;
      case 'reset':
      case 'more':
      case 'change':
      case 'end': {
        const sub = this._subs.get(msg.sub);
        if (sub) sub['_' + msg.t](msg); // unknown id: a late message after unsub
        return;
      }
      case 'result': {
        const c = this._calls.get(msg.call);
        if (!c) return;
        this._calls.delete(msg.call);
        if (msg.error != null) c.reject(callError(msg.error.code, msg.error.message));
        else c.resolve(msg.ok);
        return;
      }
      case 'error':
        this._emitError({ code: msg.error?.code ?? 'unknown', message: msg.error?.message ?? '' });
        return;
      default:
        console.warn('remodel: unknown frame', msg);
    }
  }

  _emitError(err) {
    if (!this._errorFns.size) console.warn('remodel: server error', err);
    for (const fn of this._errorFns) {
      try { fn(err); } catch (e) { console.error('remodel: onError listener threw', e); }
    }
  }

  _updateState() {
    const s = this._closed ? 'offline'
      : this._isLive ? 'live'
      : offline() ? 'offline'
      : this._everLive ? 'reconnecting' : 'connecting';
    if (s === this._state) return;
    this._state = s;
    if (typeof document !== 'undefined' && document.documentElement) {
      document.documentElement.dataset.remodelState = s; // lets pages style a badge in CSS
    }
    for (const fn of this._stateFns) {
      try { fn(s); } catch (e) { console.error('remodel: onState listener threw', e); }
    }
  }
}

function defaultUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/remodel/ws`;
}
