// node --test collector_js/ : the snippet's encoder against the shared wire test vectors.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const zlib = require("node:zlib");
const codec = require("./c.js");

const vectors = JSON.parse(fs.readFileSync(path.join(__dirname, "test-vectors.json"), "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s, "hex"));

test("the vectors are for wire version 1", () => {
  assert.equal(vectors.version, 1);
  assert.ok(vectors.valid.length >= 6);
});

for (const v of vectors.valid) {
  test(`encodes ${v.message} ${JSON.stringify(v.input).slice(0, 60)}`, () => {
    if (v.message === "hello") assert.equal(hex(codec.encodeHello(v.input)), v.hex);
    else if (v.message === "frame") assert.equal(hex(codec.encodeFrame(v.input)), v.hex);
    else if (v.message === "beacon") {
      assert.equal(hex(codec.encodeBeacon(v.input.messages.map(unhex))), v.hex);
    } else if (v.message === "ack") assert.equal(codec.decodeAck(unhex(v.hex)), v.input.seq);
    else assert.fail(`unknown vector kind ${v.message}`);
  });
}

test("varints survive values up to 2^41 (epoch milliseconds)", () => {
  const frame = codec.encodeFrame({ seq: 2 ** 41, t0: 0, x0: -(2 ** 20), y0: 2 ** 20, records: [] });
  assert.equal(hex(frame.slice(0, 8)), "0102808080808040");
});

test("an ack from another protocol is ignored", () => {
  assert.equal(codec.decodeAck(unhex("02810a")), -1);
  assert.equal(codec.decodeAck(unhex("018180")), -1);
});

test("the snippet stays under 5 KB gzipped", () => {
  const source = fs.readFileSync(path.join(__dirname, "c.js"));
  const gz = zlib.gzipSync(source, { level: 9 }).length;
  assert.ok(gz < 5 * 1024, `c.js is ${gz} bytes gzipped`);
});

test("the snippet reads no keys, text or query strings", () => {
  const source = fs.readFileSync(path.join(__dirname, "c.js"), "utf8");
  for (const banned of ["keydown", "keyup", "keypress", "innerText", "textContent", "location.search", "location.href", "input\""]) {
    assert.ok(!source.includes(banned), `c.js mentions ${banned}`);
  }
});
