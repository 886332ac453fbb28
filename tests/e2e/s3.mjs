// A real S3 server for the recording tests (s3s-fs: checks SigV4, multipart) and a minimal
// SigV4 client to download what Consulta uploaded, independently of Consulta's own client.

import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freeTcpPort, sleep, tempDir } from './harness.mjs';

export const S3S_BIN = process.env.S3S_FS_BIN || path.join(os.homedir(), '.cargo', 'bin', 's3s-fs');
export const ACCESS_KEY = 'consulta-e2e-access';
export const SECRET_KEY = 'consulta-e2e-secret-0123456789';

/** Starts s3s-fs with one bucket; `stop()` kills it, `start()` brings it back on the same port. */
export async function startS3(bucket) {
  const dir = tempDir('consulta-s3-');
  fs.mkdirSync(path.join(dir, bucket));
  // Not inside `dir`, which s3s-fs serves (a file there would be listed as a bucket).
  const logPath = path.join(tempDir('consulta-s3-log-'), 's3s.log');
  const port = await freeTcpPort();
  const endpoint = `http://127.0.0.1:${port}`;
  let child = null;
  const start = async () => {
    if (child) return;
    const log = fs.openSync(logPath, 'a');
    child = spawn(
      S3S_BIN,
      ['--host', '127.0.0.1', '--port', String(port), '--access-key', ACCESS_KEY, '--secret-key', SECRET_KEY, dir],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    let exited = null;
    child.once('exit', (code, signal) => {
      exited = { code, signal };
    });
    const deadline = Date.now() + 15_000;
    for (;;) {
      // Up means s3s-fs itself answers: an S3 error document for an unsigned request. Anything
      // else on that port (the port was taken meanwhile) must not pass for the store.
      const up = await fetch(endpoint, { signal: AbortSignal.timeout(1_000) }).then(
        async (r) => r.status === 403 && (await r.text()).includes('<Code>AccessDenied</Code>'),
        () => false,
      );
      if (exited) {
        child = null;
        throw new Error(`s3s-fs exited at start (${JSON.stringify(exited)}); log: ${fs.readFileSync(logPath, 'utf8').slice(-500)}`);
      }
      if (up) return;
      if (Date.now() > deadline) throw new Error(`s3s-fs did not start on ${endpoint}`);
      await sleep(100);
    }
  };
  const stop = async () => {
    if (!child) return;
    const c = child;
    child = null;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  };
  await start();
  return { endpoint, bucket, dir, start, stop, get: (key) => s3Get(endpoint, bucket, key), list: (prefix) => s3List(endpoint, bucket, prefix) };
}

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
const hmac = (key, data) => createHmac('sha256', key).update(data).digest();

/** A SigV4-signed GET (path-style). */
async function signedGet(endpoint, pathname, query = '') {
  const url = new URL(endpoint);
  const now = new Date();
  const amzDate = now.toISOString().replace(/[:-]|\.\d{3}/g, '');
  const day = amzDate.slice(0, 8);
  const region = 'us-east-1';
  const payloadHash = sha256('');
  const headers = { host: url.host, 'x-amz-content-sha256': payloadHash, 'x-amz-date': amzDate };
  const signed = Object.keys(headers).sort();
  const canonical = [
    'GET',
    pathname,
    query,
    ...signed.map((h) => `${h}:${headers[h]}`),
    '',
    signed.join(';'),
    payloadHash,
  ].join('\n');
  const scope = `${day}/${region}/s3/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n');
  let k = hmac(`AWS4${SECRET_KEY}`, day);
  k = hmac(k, region);
  k = hmac(k, 's3');
  k = hmac(k, 'aws4_request');
  const signature = createHmac('sha256', k).update(toSign).digest('hex');
  const auth = `AWS4-HMAC-SHA256 Credential=${ACCESS_KEY}/${scope}, SignedHeaders=${signed.join(';')}, Signature=${signature}`;
  const res = await fetch(`${endpoint}${pathname}${query ? `?${query}` : ''}`, {
    headers: { 'x-amz-content-sha256': payloadHash, 'x-amz-date': amzDate, Authorization: auth },
  });
  return res;
}

const encodeKey = (key) => key.split('/').map(encodeURIComponent).join('/');

export async function s3Get(endpoint, bucket, key) {
  const res = await signedGet(endpoint, `/${bucket}/${encodeKey(key)}`);
  if (res.status !== 200) throw new Error(`GET ${key}: ${res.status} ${await res.text()}`);
  return Buffer.from(await res.arrayBuffer());
}

/** Keys under `prefix` (ListObjectsV2). */
export async function s3List(endpoint, bucket, prefix) {
  const query = `list-type=2&prefix=${encodeURIComponent(prefix)}`;
  const res = await signedGet(endpoint, `/${bucket}`, query);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`LIST ${prefix}: ${res.status} ${text}`);
  return [...text.matchAll(/<Key>([^<]+)<\/Key>/g)].map((m) => m[1]);
}

/** The `[s3]` section of a Consulta config that stores into `s3` (from startS3). */
export const s3ConfigLines = (s3) => [
  '[s3]',
  `endpoint = "${s3.endpoint}"`,
  `bucket = "${s3.bucket}"`,
  `access_key_id = "${ACCESS_KEY}"`,
  `secret_access_key = "${SECRET_KEY}"`,
];

export { sha256 };
