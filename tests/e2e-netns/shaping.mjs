// Shapes the patient's link in the namespaces of scripts/netns-roaming.sh (issue 21's weak-network
// tests). This kernel has no netem (see ../shared/HARNESS.md): the rate is a tbf qdisc, the loss
// an nft rule `numgen random mod 100 < L drop` in a table of its own.
//
//   side 'down' (the patient's downlink, server -> patient):
//     rate: tbf on the egress of the server-side veth end (${id}p0, in the server namespace)
//     loss: nft in the patient namespace, prerouting, packets arriving on ${id}p1
//   side 'up' (the patient's uplink, patient -> server):
//     rate: tbf on the egress of the patient-side veth end (${id}p1, in the patient namespace)
//     loss: nft in the server namespace, prerouting, packets arriving on ${id}p0
//
// Why the loss is applied where the packets ARRIVE rather than in the sender's output chain: a
// packet dropped by nft in the output hook makes the sender's sendmsg() fail with EPERM (checked
// on this machine), so the sender would know which packets were lost, and the server's UDP loop
// would see errors that a real lossy link never gives. Dropped on the receiving host's ingress, the
// loss is silent, as on a radio link. (A tbf drop is silent too: a UDP sender without IP_RECVERR
// gets no error for a full qdisc.)
//
// Every function is idempotent: shape() replaces what was there (tc qdisc replace; the nft table
// is deleted and made again in one transaction), unshape() removes it and ignores "not there".

import { NS, sh } from './roaming-net.mjs';

const TABLE = 'consulta_weak';
const BURST = '12k';
const LATENCY = '200ms';

/** The patient's current veth pair: { server: name in the server ns, patient: name in the patient ns }. */
export async function patientPair() {
  const links = JSON.parse(await sh('ip', ['-n', NS.patient, '-j', 'link', 'show', 'type', 'veth'])).map((l) => l.ifname);
  const want = process.env.ROAMING_PATIENT_LINK;
  // The script's first link is ${id}p1 (peer ${id}p0); roaming-net.mjs's later ones ${id}r<N>b (peer ${id}r<N>a).
  const patient = links.includes(want) ? want : links[0];
  if (!patient) throw new Error('the patient namespace has no veth link');
  const server = patient.replace(/1$/, '0').replace(/(r\d+)b$/, '$1a');
  if (server === patient) throw new Error(`no server-side peer name for ${patient}`);
  return { server, patient };
}

async function where(side) {
  const pair = await patientPair();
  if (side === 'down') return { rateNs: NS.server, rateDev: pair.server, lossNs: NS.patient, lossDev: pair.patient };
  if (side === 'up') return { rateNs: NS.patient, rateDev: pair.patient, lossNs: NS.server, lossDev: pair.server };
  throw new Error(`side must be 'down' or 'up', not ${side}`);
}

const nft = (netns, script) => sh('ip', ['netns', 'exec', netns, 'nft', '-f', '-'], { input: script });
const nftJson = async (netns, args) => JSON.parse(await sh('ip', ['netns', 'exec', netns, 'nft', '-j', ...args]));
const tableName = (side) => `${TABLE}_${side}`;

/**
 * Shapes one direction of the patient's link: `rateKbit` (tbf; omitted/0 = no rate limit) and
 * `lossPct` (random drop of that percentage of packets; omitted/0 = none). Replaces any shaping of
 * that side. Returns what was applied.
 */
export async function shape(side, { rateKbit = 0, lossPct = 0 } = {}) {
  const w = await where(side);
  if (rateKbit > 0) {
    await sh('tc', ['-n', w.rateNs, 'qdisc', 'replace', 'dev', w.rateDev, 'root', 'tbf', 'rate', `${rateKbit}kbit`, 'burst', BURST, 'latency', LATENCY]);
  } else {
    await delQdisc(w.rateNs, w.rateDev);
  }
  const t = tableName(side);
  if (lossPct > 0) {
    if (!(lossPct < 100)) throw new Error(`lossPct must be < 100 (${lossPct})`);
    // "table ...; delete table ...;" first: makes the delete succeed whether or not it existed.
    await nft(
      w.lossNs,
      [
        `table inet ${t}`,
        `delete table inet ${t}`,
        `table inet ${t} {`,
        '  chain pre {',
        '    type filter hook prerouting priority -300; policy accept;',
        `    iifname "${w.lossDev}" counter`,
        `    iifname "${w.lossDev}" numgen random mod 100 < ${Math.round(lossPct)} counter drop`,
        '  }',
        '}',
        '',
      ].join('\n'),
    );
  } else {
    await delTable(w.lossNs, t);
  }
  return { side, rateKbit, lossPct, rateDev: w.rateDev, lossDev: w.lossDev };
}

/** Removes the shaping of `side` ('down' | 'up'), or of both sides without an argument. */
export async function unshape(side) {
  for (const s of side ? [side] : ['down', 'up']) {
    const w = await where(s);
    await delQdisc(w.rateNs, w.rateDev);
    await delTable(w.lossNs, tableName(s));
  }
}

async function delQdisc(netns, dev) {
  const qd = JSON.parse(await sh('tc', ['-n', netns, '-j', 'qdisc', 'show', 'dev', dev, 'root']));
  if (qd.some((q) => q.kind === 'tbf')) await sh('tc', ['-n', netns, 'qdisc', 'del', 'dev', dev, 'root']);
}

async function delTable(netns, t) {
  await nft(netns, `table inet ${t}\ndelete table inet ${t}\n`);
}

/**
 * What the shaping of `side` did so far: { tbf: {sent_packets, dropped, overlimits, rateKbit} | null,
 * loss: {seen, dropped, pct} | null } (the counters of the current qdisc / nft table).
 */
export async function shapingCounters(side) {
  const w = await where(side);
  const qd = JSON.parse(await sh('tc', ['-n', w.rateNs, '-s', '-j', 'qdisc', 'show', 'dev', w.rateDev, 'root']));
  const tbf = qd.find((q) => q.kind === 'tbf');
  let loss = null;
  try {
    const j = await nftJson(w.lossNs, ['list', 'table', 'inet', tableName(side)]);
    const counters = j.nftables
      .filter((x) => x.rule)
      .map((x) => x.rule.expr.find((e) => e.counter)?.counter?.packets ?? 0);
    if (counters.length >= 2) loss = { seen: counters[0], dropped: counters[1], pct: counters[0] ? (100 * counters[1]) / counters[0] : 0 };
  } catch {
    // no table: no loss applied
  }
  return {
    tbf: tbf
      ? { sent_packets: tbf.packets, dropped: tbf.drops, overlimits: tbf.overlimits, rateKbit: tbf.options?.rate ? Math.round((tbf.options.rate * 8) / 1000) : null }
      : null,
    loss,
  };
}
