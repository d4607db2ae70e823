// A minimal MQTT 5 / 3.1.1 client over WebSocket, written for the chargebridge dashboard.
// It does only what the page needs: CONNECT with user and password, SUBSCRIBE, PUBLISH at
// QoS 0 or 1 (with the broker's PUBACK reason code under MQTT 5, which tells a refused
// publish), PUBACK of incoming QoS 1, PINGREQ. No QoS 2, no topic aliases, no persistence.
(() => {
"use strict";

const MqttError = class extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
};

const REASONS = {
  0x01: "unacceptable protocol version", 0x02: "identifier rejected", 0x03: "server unavailable",
  0x04: "bad user name or password", 0x05: "not authorized",
  0x80: "unspecified error", 0x84: "unsupported protocol version", 0x85: "client id not valid",
  0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
  0x89: "server busy", 0x8c: "bad authentication method", 0x8f: "topic filter invalid",
  0x90: "topic name invalid", 0x97: "quota exceeded", 0x99: "payload format invalid",
};

function reasonText(code) {
  return REASONS[code] || `reason 0x${code.toString(16).padStart(2, "0")}`;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function varint(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function str(s) {
  const b = enc.encode(s);
  return [b.length >> 8, b.length & 0xff, ...b];
}

function packet(first, body) {
  return new Uint8Array([first, ...varint(body.length), ...body]);
}

class MqttClient {
  // options: url, clientId, username, password, keepalive (s), version (5 or 4 = 3.1.1)
  constructor(options) {
    this.o = Object.assign({ keepalive: 30, version: 5, timeoutMs: 10000 }, options);
    this.onmessage = () => {};
    this.onclose = () => {};
    this.nextId = 1;
    this.pending = new Map(); // packet id -> {resolve, reject, timer}
    this.buf = new Uint8Array(0);
    this.ws = null;
    this.pinger = null;
    this.connected = false;
  }

  get version() {
    return this.o.version;
  }

  connect() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err) => {
        if (!settled) {
          settled = true;
          reject(err);
        }
      };
      const ws = (this.ws = new WebSocket(this.o.url, "mqtt"));
      ws.binaryType = "arraybuffer";
      const timer = setTimeout(() => {
        fail(new MqttError("no answer from the broker", -1));
        ws.close();
      }, this.o.timeoutMs);
      this.onconnack = (code) => {
        clearTimeout(timer);
        if (code === 0) {
          settled = true;
          this.connected = true;
          this.pinger = setInterval(() => this.send(new Uint8Array([0xc0, 0])),
            (this.o.keepalive * 1000) / 2);
          resolve();
        } else {
          fail(new MqttError(reasonText(code), code));
          ws.close();
        }
      };
      ws.onopen = () => this.send(this.connectPacket());
      ws.onmessage = (ev) => this.feed(new Uint8Array(ev.data));
      ws.onclose = (ev) => {
        clearTimeout(timer);
        clearInterval(this.pinger);
        const was = this.connected;
        this.connected = false;
        for (const p of this.pending.values()) {
          clearTimeout(p.timer);
          p.reject(new MqttError("connection closed", -1));
        }
        this.pending.clear();
        if (ev.code === 1011) fail(new MqttError("the dashboard cannot reach the broker", -3));
        else fail(new MqttError(`connection closed before the broker answered (${ev.code})`, -2));
        if (was) this.onclose(ev);
      };
    });
  }

  connectPacket() {
    const o = this.o;
    let flags = 0x02; // clean start
    if (o.username) flags |= 0x80;
    if (o.password) flags |= 0x40;
    const body = [...str("MQTT"), o.version, flags, o.keepalive >> 8, o.keepalive & 0xff];
    if (o.version === 5) body.push(0); // no properties
    body.push(...str(o.clientId || ""));
    if (o.username) body.push(...str(o.username));
    if (o.password) body.push(...str(o.password));
    return packet(0x10, body);
  }

  close() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.send(new Uint8Array([0xe0, 0]));
    }
    this.connected = false;
    if (this.ws) this.ws.close();
  }

  send(bytes) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  newId() {
    const id = this.nextId;
    this.nextId = (this.nextId % 65535) + 1;
    return id;
  }

  // Resolves with the per-filter granted QoS / reason codes.
  subscribe(filters) {
    const id = this.newId();
    const body = [id >> 8, id & 0xff];
    if (this.o.version === 5) body.push(0);
    for (const f of filters) body.push(...str(f), 1);
    return this.await(id, packet(0x82, body));
  }

  // QoS 1 resolves with the PUBACK reason code (0 under 3.1.1; >= 0x80 means refused).
  publish(topic, payload, qos = 1) {
    const data = typeof payload === "string" ? enc.encode(payload) : payload;
    const body = [...str(topic)];
    let id = 0;
    if (qos) {
      id = this.newId();
      body.push(id >> 8, id & 0xff);
    }
    if (this.o.version === 5) body.push(0);
    body.push(...data);
    const bytes = packet(0x30 | (qos << 1), body);
    if (!qos) {
      this.send(bytes);
      return Promise.resolve(0);
    }
    return this.await(id, bytes);
  }

  await(id, bytes) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new MqttError("no acknowledgement from the broker", -1));
      }, this.o.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send(bytes);
    });
  }

  settle(id, value) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(value);
  }

  feed(chunk) {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    let pos = 0;
    for (;;) {
      if (joined.length - pos < 2) break;
      let len = 0;
      let mult = 1;
      let i = pos + 1;
      let complete = false;
      for (; i < joined.length && i < pos + 5; i++) {
        len += (joined[i] & 0x7f) * mult;
        mult *= 128;
        if (!(joined[i] & 0x80)) {
          complete = true;
          i++;
          break;
        }
      }
      if (!complete) {
        if (i >= pos + 5) {
          this.ws.close(); // malformed length
          return;
        }
        break;
      }
      if (joined.length < i + len) break;
      this.handle(joined[pos], joined.subarray(i, i + len));
      pos = i + len;
    }
    this.buf = joined.slice(pos);
  }

  props(body, at) {
    // Skips an MQTT 5 property block; returns the offset after it.
    if (this.o.version !== 5) return at;
    let len = 0;
    let mult = 1;
    for (;;) {
      const b = body[at++];
      len += (b & 0x7f) * mult;
      mult *= 128;
      if (!(b & 0x80)) break;
    }
    return at + len;
  }

  handle(first, body) {
    const type = first >> 4;
    if (type === 2) {
      this.onconnack(body[1]);
    } else if (type === 3) {
      const qos = (first >> 1) & 3;
      const tlen = (body[0] << 8) | body[1];
      const topic = dec.decode(body.subarray(2, 2 + tlen));
      let at = 2 + tlen;
      let id = 0;
      if (qos) {
        id = (body[at] << 8) | body[at + 1];
        at += 2;
      }
      at = this.props(body, at);
      if (qos === 1) this.send(new Uint8Array([0x40, 2, id >> 8, id & 0xff]));
      this.onmessage(topic, body.subarray(at), (first & 1) === 1);
    } else if (type === 4) {
      const id = (body[0] << 8) | body[1];
      this.settle(id, body.length > 2 ? body[2] : 0);
    } else if (type === 9) {
      const id = (body[0] << 8) | body[1];
      const at = this.props(body, 2);
      this.settle(id, Array.from(body.subarray(at)));
    } else if (type === 14) {
      this.ws.close(); // the broker disconnects us (MQTT 5 DISCONNECT)
    }
  }
}

window.ChargebridgeMqtt = { MqttClient, MqttError, reasonText };
})();
