'use strict';
// node_copy: a Node.js consumer the usual way: amqplib + pg + pg-copy-streams.
// Messages are rendered as COPY text rows into a batch; a batch is written
// with COPY ... FROM STDIN when it has BATCH rows or LINGER_MS after its
// first row (like sluice's --linger-ms). COPY runs as its own implicit
// transaction and pg-copy-streams emits 'finish' only after ReadyForQuery,
// i.e. after the commit; only then is the batch acked with one
// ack(lastMessage, allUpTo=true). One COPY is in flight at a time; the next
// batch fills meanwhile. ingested_at is stamped on receipt, as sluice does.
//
// Env: RABBITMQ_URL POSTGRES_DSN QUEUE TABLE PREFETCH(2000) BATCH(1000)
//      LINGER_MS(20) IDLE_EXIT_MS(1000)
// Last line on stdout: a JSON summary (msgs, batches, first_msg_unix, last_commit_unix).
// Setup: npm ci (in this directory).

const amqp = require('amqplib');
const { Client } = require('pg');
const { from: copyFrom } = require('pg-copy-streams');
const { performance } = require('node:perf_hooks');

function envInt(name, def) {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name}: not a number: ${v}`);
  return n;
}

const RABBITMQ_URL = process.env.RABBITMQ_URL || 'amqp://guest:guest@localhost:5672/';
const POSTGRES_DSN = process.env.POSTGRES_DSN || '';
const QUEUE = process.env.QUEUE;
if (!QUEUE) throw new Error('QUEUE is required');
const TABLE = process.env.TABLE || QUEUE;
const PREFETCH = envInt('PREFETCH', 2000);
const BATCH = Math.max(1, envInt('BATCH', 1000));
const LINGER_MS = envInt('LINGER_MS', 20);
const IDLE_EXIT_MS = envInt('IDLE_EXIT_MS', 1000);

// COPY text format: backslash, newline, carriage return and tab must be
// escaped inside a field; \N is NULL.
const ESCAPES = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };
const NEEDS_ESCAPE = /[\\\n\r\t]/;
function esc(s) {
  if (s === undefined || s === null) return '\\N';
  s = String(s);
  return NEEDS_ESCAPE.test(s) ? s.replace(/[\\\n\r\t]/g, (c) => ESCAPES[c]) : s;
}

// Wall clock with microseconds: ISO 8601 that timestamptz accepts.
function nowIsoMicros() {
  const t = performance.timeOrigin + performance.now(); // ms, fractional
  const ms = Math.floor(t);
  const us = Math.floor((t - ms) * 1000);
  return new Date(ms).toISOString().slice(0, -1) + String(us).padStart(3, '0') + 'Z';
}

function quoteIdent(name) {
  return name.split('.').map((p) => '"' + p.replace(/"/g, '""') + '"').join('.');
}

function renderRow(msg) {
  const f = msg.fields;
  const p = msg.properties;
  return [
    esc(f.exchange),
    esc(f.routingKey),
    esc(p.messageId),
    esc(p.contentType),
    p.headers === undefined ? '\\N' : esc(JSON.stringify(p.headers)),
    p.timestamp === undefined ? '\\N' : new Date(p.timestamp * 1000).toISOString(),
    nowIsoMicros(),
    // bytea hex input is \x..., and the backslash itself is escaped in COPY text.
    '\\\\x' + msg.content.toString('hex'),
  ].join('\t') + '\n';
}

async function main() {
  const copySql = `COPY ${quoteIdent(TABLE)} (exchange, routing_key, message_id, content_type,` +
    ' headers, published_at, ingested_at, body) FROM STDIN';
  const db = new Client({ connectionString: POSTGRES_DSN || undefined });
  await db.connect();
  const conn = await amqp.connect(RABBITMQ_URL);
  const ch = await conn.createChannel();
  await ch.prefetch(PREFETCH);

  let rows = [];
  let lastMsg = null;
  let lingerTimer = null;
  let flushing = Promise.resolve();
  let inFlight = 0;
  let lastMessageAt = Date.now();
  let failed = null;
  const stats = { msgs: 0, batches: 0, first_msg_unix: 0, last_commit_unix: 0 };

  async function writeBatch(batchRows, ackMsg) {
    const stream = db.query(copyFrom(copySql));
    await new Promise((resolve, reject) => {
      stream.on('error', reject);
      stream.on('finish', resolve);
      stream.end(batchRows.join(''));
    });
    ch.ack(ackMsg, true); // committed: ack the whole batch
    stats.msgs += batchRows.length;
    stats.batches += 1;
    stats.last_commit_unix = Date.now() / 1000;
  }

  function flush() {
    if (lingerTimer) {
      clearTimeout(lingerTimer);
      lingerTimer = null;
    }
    if (rows.length === 0) return;
    const batchRows = rows;
    const ackMsg = lastMsg;
    rows = [];
    inFlight++;
    // One COPY at a time on the connection, in order.
    flushing = flushing
      .then(() => writeBatch(batchRows, ackMsg))
      .catch((err) => { failed = failed || err; })
      .finally(() => { inFlight--; });
  }

  await ch.consume(QUEUE, (msg) => {
    if (msg === null) { failed = failed || new Error('consumer cancelled by the broker'); return; }
    if (stats.first_msg_unix === 0) stats.first_msg_unix = Date.now() / 1000;
    lastMessageAt = Date.now();
    rows.push(renderRow(msg));
    lastMsg = msg;
    if (rows.length === 1) lingerTimer = setTimeout(flush, LINGER_MS);
    if (rows.length >= BATCH) flush();
  }, { noAck: false });

  // Idle exit: nothing arrived for IDLE_EXIT_MS and nothing is pending.
  await new Promise((resolve) => {
    const check = () => {
      if (failed) return resolve();
      const quiet = Date.now() - lastMessageAt;
      if (quiet >= IDLE_EXIT_MS && rows.length === 0 && inFlight === 0) return resolve();
      setTimeout(check, Math.max(10, Math.min(IDLE_EXIT_MS - quiet, 100)));
    };
    setTimeout(check, IDLE_EXIT_MS);
  });
  await flushing;
  if (failed) throw failed;
  await ch.close(); // waits for close-ok: the acks before it are processed
  await conn.close();
  await db.end();
  process.stdout.write(JSON.stringify({ system: 'node-copy', ...stats }) + '\n');
}

main().catch((err) => {
  console.error('node_copy:', err);
  process.exit(1);
});
