/*
 * wshub.js: a browser client for wshub's channel protocol v1 (docs/protocol.md).
 * Plain JavaScript, no build step, no dependencies. Served by the server at /wshub.js.
 *
 *   const client = new Wshub.Client("ws://" + location.host + "/ws");
 *   client.addEventListener("state", e => console.log(e.detail.state));
 *   const sub = client.subscribe("room", pub => console.log(pub.offset, pub.data));
 *   sub.addEventListener("subscribed", e => console.log("recovered?", e.detail.recovered));
 *   client.publish("room", {text: "hi"}).then(pos => console.log("offset", pos.offset));
 *
 * What it does for you:
 * - Connects with the subprotocol "wshub.v1"; after a drop it reconnects with
 *   exponential backoff and full jitter, forever, until close().
 * - Resubscribes every channel after a reconnect with `since` = the last position it
 *   delivered, and says whether the server recovered what was missed (`recovered`).
 * - Never delivers an offset twice, and delivers offsets in order (dedupe by offset).
 * - publish() sends a `pub` with an idempotency `key`; if the connection drops before the
 *   ack it sends the same `pub` again, with the same key, after reconnecting, so the
 *   publication happens once. It gives up (rejects) after `ackTimeout` in all.
 *
 * Events on the client (EventTarget, `event.detail`):
 *   "state"      {state: "connecting" | "open" | "reconnecting" | "closed", attempt, delay}
 *   "error"      {code, msg}: an error reply with no command to give it to
 *   "hello"      {client, user}: the server accepted the hello (sent on every connection)
 *   "hellofailed" {code, msg}: it refused it (in token mode it then closes with 4001)
 * Events on a subscription:
 *   "subscribed" {ch, epoch, offset, recovered (true/false, or null on the first sub), missed}
 *   "pub"        {ch, offset, data, from}
 *   "unsub"      {ch, code, reason}: the server ended the subscription
 *   "join"       {ch, client, user, info}: another connection subscribed (with {joins: true})
 *   "leave"      {ch, client, user, info}: another connection left (unsub, closed, died, cut)
 *
 * Presence: client.presence(ch) resolves with {clients: [{client, user, info}],
 * num_clients, num_users} (for a channel this client is subscribed to).
 */
(function (global) {
  "use strict";

  const SUBPROTOCOL = "wshub.v1";

  function randomKey() {
    const bytes = new Uint8Array(12);
    (global.crypto || {}).getRandomValues
      ? global.crypto.getRandomValues(bytes)
      : bytes.forEach((_, i) => (bytes[i] = Math.floor(Math.random() * 256)));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** The error a publish() or command rejects with. */
  class WshubError extends Error {
    constructor(code, msg) {
      super(msg);
      this.name = "WshubError";
      this.code = code;
    }
  }

  /** One channel's subscription: its position, and its events. */
  class Subscription extends EventTarget {
    constructor(client, ch) {
      super();
      this.client = client;
      this.ch = ch;
      this.epoch = null; // the channel's epoch, once subscribed
      this.offset = null; // the last offset delivered
      this.active = false; // the server has confirmed the subscription on this connection
      this.pending = []; // pushes that arrived before the sub reply
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail }));
    }

    /** Delivers one push that waited for the sub reply, in its order. */
    _deliverPush(m) {
      if (m.push === "pub") this._deliver(m);
      else this._emit(m.push, { ch: m.ch, client: m.client, user: m.user, info: m.info || null });
    }

    /** Delivers one publication unless its offset was delivered already. */
    _deliver(p) {
      if (this.offset !== null && p.offset <= this.offset) return; // a duplicate
      this.offset = p.offset;
      this._emit("pub", { ch: this.ch, offset: p.offset, data: p.data, from: p.from || null });
    }

    /** Stops the subscription (the server is told if connected). */
    unsubscribe() {
      this.client._unsubscribe(this);
    }
  }

  class Client extends EventTarget {
    /**
     * url: the server's /ws endpoint. options:
     *   minDelay (ms, 250), maxDelay (ms, 10000): reconnect backoff bounds;
     *   ackTimeout (ms, 15000): how long publish() and commands wait in all;
     *   hello (object, optional): sent as {"op":"hello", ...hello} first on every connection;
     *   autoConnect (true).
     */
    constructor(url, options) {
      super();
      const o = options || {};
      this.url = url;
      this.minDelay = o.minDelay || 250;
      this.maxDelay = o.maxDelay || 10000;
      this.ackTimeout = o.ackTimeout || 15000;
      this.hello = o.hello || null;
      this.state = "closed";
      this.reconnects = 0; // connections opened after the first one
      this.attempt = 0; // failed attempts since the last open
      this.ws = null;
      this.nextId = 1;
      this.calls = new Map(); // id -> {frame, resolve, reject, timer, resend}
      this.subs = new Map(); // ch -> Subscription
      this.timer = null;
      this.stopped = false;
      this.everOpened = false;
      if (o.autoConnect !== false) this.connect();
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail }));
    }

    _setState(state, extra) {
      this.state = state;
      this._emit("state", Object.assign({ state, attempt: this.attempt, reconnects: this.reconnects }, extra || {}));
    }

    /** Opens the connection (done by the constructor unless autoConnect is false). */
    connect() {
      this.stopped = false;
      if (this.ws) return;
      clearTimeout(this.timer);
      this._setState(this.everOpened ? "reconnecting" : "connecting");
      let ws;
      try {
        ws = new WebSocket(this.url, [SUBPROTOCOL]);
      } catch (e) {
        this._scheduleReconnect();
        return;
      }
      this.ws = ws;
      ws.onopen = () => this._onOpen(ws);
      ws.onmessage = (e) => this._onMessage(ws, e.data);
      ws.onclose = () => this._onClose(ws);
      ws.onerror = () => {}; // a close event always follows
    }

    /** Closes the connection for good: no reconnect; pending publishes are rejected. */
    close() {
      this.stopped = true;
      clearTimeout(this.timer);
      for (const [id, call] of this.calls) {
        clearTimeout(call.timer);
        call.reject(new WshubError(0, "client closed"));
        this.calls.delete(id);
      }
      if (this.ws) this.ws.close(1000, "bye");
      this.ws = null;
      this._setState("closed");
    }

    /** Subscribes to `ch`; `onPub(pub)` (optional) is added as a "pub" listener.
     *  options: {joins: true} also delivers "join" and "leave" events. */
    subscribe(ch, onPub, options) {
      let sub = this.subs.get(ch);
      if (!sub) {
        sub = new Subscription(this, ch);
        sub.joins = !!(options && options.joins);
        this.subs.set(ch, sub);
        if (this.state === "open") this._sendSub(sub);
      }
      if (onPub) sub.addEventListener("pub", (e) => onPub(e.detail));
      return sub;
    }

    _unsubscribe(sub) {
      if (this.subs.get(sub.ch) !== sub) return;
      this.subs.delete(sub.ch);
      if (this.state === "open" && sub.active) this._call({ op: "unsub", ch: sub.ch }, false).catch(() => {});
      sub.active = false;
    }

    /**
     * Publishes `data` (any JSON value) to `ch`. Resolves with {epoch, offset} once the
     * publication is in the channel's history; retried with the same key across
     * reconnects; rejects with a WshubError on an error reply or after ackTimeout.
     */
    publish(ch, data) {
      return this._call({ op: "pub", ch, data, key: randomKey() }, true);
    }

    /** Reads a channel's history: resolves with {epoch, offset, pubs}. */
    history(ch, since, limit) {
      const cmd = { op: "history", ch };
      if (since) cmd.since = since;
      if (limit !== undefined) cmd.limit = limit;
      return this._call(cmd, true);
    }

    /** Who is subscribed to `ch`: resolves with {clients, num_clients, num_users}. */
    presence(ch) {
      return this._call({ op: "presence", ch }, true);
    }

    /** Sends a command and returns a promise of its ok reply. `resend`: send it again
     *  after a reconnect when no reply came (safe for pub with a key, and for reads). */
    _call(cmd, resend) {
      return new Promise((resolve, reject) => {
        const id = this.nextId++;
        const call = { cmd, resolve, reject, resend, sent: false };
        call.timer = setTimeout(() => {
          this.calls.delete(id);
          reject(new WshubError(-1, "no reply within " + this.ackTimeout + " ms"));
        }, this.ackTimeout);
        this.calls.set(id, call);
        if (this.state === "open") this._send(id, call);
      });
    }

    _send(id, call) {
      call.sent = true;
      this.ws.send(JSON.stringify(Object.assign({ id }, call.cmd)));
    }

    _sendSub(sub) {
      const cmd = { op: "sub", ch: sub.ch };
      if (sub.epoch !== null && sub.offset !== null) cmd.since = { epoch: sub.epoch, offset: sub.offset };
      if (sub.joins) cmd.joins = true;
      sub.active = false;
      sub.pending = [];
      const id = this.nextId++;
      this.calls.set(id, {
        cmd,
        resend: false,
        internal: true,
        resolve: (ok) => this._onSubscribed(sub, cmd, ok),
        reject: (err) => sub._emit("unsub", { ch: sub.ch, code: err.code, reason: err.message }),
      });
      this._send(id, this.calls.get(id));
    }

    _onSubscribed(sub, cmd, ok) {
      if (this.subs.get(sub.ch) !== sub) return;
      const recovering = cmd.since !== undefined;
      const recovered = recovering ? ok.recovered === true : null;
      const pubs = ok.pubs || [];
      if (recovering && !recovered) {
        // History no longer reaches back (or the server restarted): start from the top.
        sub.offset = ok.offset;
      } else if (sub.offset === null) {
        sub.offset = ok.offset - pubs.length;
      }
      sub.epoch = ok.epoch;
      const fresh = recovered === false ? [] : pubs.filter((p) => p.offset > sub.offset);
      sub.active = true;
      // "subscribed" first, then what was missed, then what arrived meanwhile: listeners
      // see the events in the order things happened.
      sub._emit("subscribed", { ch: sub.ch, epoch: sub.epoch, offset: ok.offset, recovered, missed: fresh.length });
      for (const p of fresh) sub._deliver(p);
      if (sub.offset < ok.offset) sub.offset = ok.offset;
      const early = sub.pending;
      sub.pending = [];
      for (const p of early) sub._deliverPush(p);
    }

    _onOpen(ws) {
      if (ws !== this.ws) return;
      if (this.everOpened) this.reconnects++;
      this.everOpened = true;
      this.attempt = 0;
      this._setState("open");
      if (this.hello) {
        // Sent before the subscriptions, so the server knows who resubscribes.
        const id = this.nextId++;
        this.calls.set(id, {
          cmd: Object.assign({ op: "hello" }, this.hello),
          internal: true,
          resolve: (ok) => this._emit("hello", ok),
          reject: (err) => this._emit("hellofailed", { code: err.code, msg: err.message }),
        });
        this._send(id, this.calls.get(id));
      }
      for (const sub of this.subs.values()) this._sendSub(sub);
      // Commands not yet answered go (again) on the new connection, in their order.
      for (const [id, call] of this.calls) {
        if (call.internal) continue;
        if (!call.sent || call.resend) this._send(id, call);
      }
    }

    _onMessage(ws, text) {
      if (ws !== this.ws) return;
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        return;
      }
      if (msg.push === "pub" || msg.push === "join" || msg.push === "leave") {
        const sub = this.subs.get(msg.ch);
        if (!sub) return;
        if (sub.active) sub._deliverPush(msg);
        else sub.pending.push(msg);
        return;
      }
      if (msg.push === "unsub") {
        const sub = this.subs.get(msg.ch);
        if (sub) {
          sub.active = false;
          this.subs.delete(msg.ch);
          sub._emit("unsub", { ch: msg.ch, code: msg.code, reason: msg.reason });
        }
        return;
      }
      const call = msg.id !== undefined ? this.calls.get(msg.id) : undefined;
      if (!call) {
        if (msg.err) this._emit("error", msg.err);
        return;
      }
      this.calls.delete(msg.id);
      clearTimeout(call.timer);
      if (msg.err) call.reject(new WshubError(msg.err.code, msg.err.msg));
      else call.resolve(msg.ok);
    }

    _onClose(ws) {
      if (ws !== this.ws) return;
      this.ws = null;
      for (const sub of this.subs.values()) sub.active = false;
      // Internal commands (sub, hello) are sent afresh on the next connection.
      for (const [id, call] of this.calls) if (call.internal) this.calls.delete(id);
      if (this.stopped) return;
      this._scheduleReconnect();
    }

    /** Full jitter: a random delay up to min(maxDelay, minDelay * 2^attempt). */
    _scheduleReconnect() {
      const ceiling = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt));
      const delay = Math.max(50, Math.floor(Math.random() * ceiling));
      this.attempt++;
      this._setState("reconnecting", { delay });
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.connect(), delay);
    }
  }

  global.Wshub = { Client, Subscription, WshubError, SUBPROTOCOL };
})(typeof window !== "undefined" ? window : globalThis);
