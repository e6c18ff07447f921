/* app.js: the tpvd dashboard.  Plain JavaScript and SVG, no library: it reads the REST API
 * (DESIGN.md section 5) with the token kept in sessionStorage and redraws in place.
 *
 * Views: /ui/ lists the studies; /ui/studies/{sid} shows one study.  A study view keeps exactly
 * one request in flight: a loop that long-polls the ranking with its ETag (wait= with
 * If-None-Match) and, when the ranking changed, reads the candidate list, then the selected
 * candidate's score job and newest JBR job (GET /v1/jobs/{jid}); changing a selector aborts the
 * request in flight and restarts the loop. */
'use strict';

const WAIT_S = 25;
/* While the selected candidate's newest JBR job is not over, the ranking is held this long at a
 * time and the job read again after each hold: a JBR job moves no study version, so nothing else
 * would tell the page that it ended. */
const JBR_FOLLOW_S = 2;
const JBR_ROWS = 50; /* units shown of a JBR result, the lowest scores */
const TERMINAL = ['succeeded', 'failed', 'canceled'];
const TOKEN_KEY = 'tpvd.token';
const SVGNS = 'http://www.w3.org/2000/svg';
const RUN_COLORS = ['#2f6fdf', '#17a589', '#8e44ad', '#d35400', '#c0392b', '#16a085', '#7f8c8d',
                    '#2c3e50', '#b7950b', '#1f618d'];

class AuthError extends Error {}

/* ---- DOM helpers ---- */

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function s(tag, attrs, ...children) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmt(v) {
  if (v === undefined || v === null) return '';
  if (typeof v !== 'number') return typeof v === 'object' ? JSON.stringify(v) : String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(3) : v.toPrecision(4).replace(/\.?0+$/, '');
}

/* ---- API access ---- */

const auth = {
  waiting: null, /* a promise resolved when the user gave a token */
  token() { return sessionStorage.getItem(TOKEN_KEY); },
  prompt(message) {
    const box = document.getElementById('auth');
    document.getElementById('auth-msg').textContent = message || '';
    box.hidden = false;
    document.getElementById('auth-token').focus();
    if (!this.waiting) {
      this.waiting = new Promise((resolve) => {
        const form = document.getElementById('auth-form');
        const done = (ev) => {
          ev.preventDefault();
          const t = document.getElementById('auth-token').value.trim();
          if (!t) return;
          sessionStorage.setItem(TOKEN_KEY, t);
          form.removeEventListener('submit', done);
          box.hidden = true;
          this.waiting = null;
          resolve();
        };
        form.addEventListener('submit', done);
      });
    }
    return this.waiting;
  },
};

/* GET path; resolves {status, etag, body}.  A 401 shows the token prompt and rejects with
 * AuthError (the caller's view restarts once a token was given). */
async function apiGet(path, { etag, signal } = {}) {
  const headers = { Accept: 'application/json' };
  const t = auth.token();
  if (t) headers.Authorization = 'Bearer ' + t;
  if (etag) headers['If-None-Match'] = etag;
  const r = await fetch(path, { headers, signal, cache: 'no-store' });
  if (r.status === 401 || r.status === 403) {
    const had = !!t;
    if (r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    auth.prompt(had ? (r.status === 401 ? 'That token was refused.'
                                        : 'That token may not read this daemon.') : '')
      .then(() => app.route());
    throw new AuthError('unauthenticated');
  }
  if (r.status === 304) return { status: 304, etag: r.headers.get('ETag') || etag, body: null };
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!r.ok) {
    const msg = body && body.error ? body.error.code + ': ' + body.error.message : 'HTTP ' + r.status;
    const err = new Error(msg);
    err.field = body && body.error && body.error.details ? body.error.details.field : undefined;
    throw err;
  }
  return { status: r.status, etag: r.headers.get('ETag'), body };
}

/* Every item of a paged list, one page after the other.  Pages of 500 (the daemon's default
 * --max-page-size: one request for a 500-candidate study), 50 when the daemon allows fewer. */
let pageSize = 500;
async function apiAll(path, signal) {
  const out = [];
  let token = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const q = sep + 'page_size=' + pageSize + (token ? '&page_token=' + encodeURIComponent(token) : '');
    let r;
    try {
      r = await apiGet(path + q, { signal });
    } catch (e) {
      if (e.field !== 'page_size' || pageSize === 50) throw e;
      pageSize = 50;
      continue;
    }
    out.push(...(r.body.items || []));
    token = r.body.next_page_token;
  } while (token);
  return out;
}

function setLive(state) {
  const e = document.getElementById('live');
  e.className = 'live' + (state ? ' ' + state : '');
}

/* ---- tooltips: a mark's <title> is the tooltip; this shows it at once on hover ---- */

function bindTip(root) {
  const tip = document.getElementById('tip');
  root.addEventListener('mousemove', (ev) => {
    const m = ev.target.closest ? ev.target.closest('.mark') : null;
    if (!m) { tip.hidden = true; return; }
    const t = m.querySelector('title');
    tip.textContent = t ? t.textContent : '';
    tip.style.left = (ev.clientX + 12) + 'px';
    tip.style.top = (ev.clientY + 12) + 'px';
    tip.hidden = false;
  });
  root.addEventListener('mouseleave', () => { tip.hidden = true; });
}

/* ---- plots ---- */

function scale(kind, lo, hi, a, b) {
  if (kind === 'log') {
    const l0 = Math.log10(lo), l1 = Math.log10(hi);
    const f = (v) => a + (Math.log10(v) - l0) / (l1 - l0 || 1) * (b - a);
    /* Powers of ten; over a short range also 2x and 5x (then every digit), so that a plot
     * spanning less than a decade still has labelled ticks inside it. */
    f.ticks = () => {
      for (const ms of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
        const t = [];
        for (let e = Math.floor(l0); e <= Math.ceil(l1); e++)
          for (const m of ms) {
            const v = m * Math.pow(10, e);
            if (v >= lo && v <= hi) t.push(v);
          }
        if (t.length >= 3 || ms.length === 9) return t.length ? t : [lo, hi];
      }
      return [lo, hi];
    };
    return f;
  }
  const f = (v) => a + (v - lo) / (hi - lo || 1) * (b - a);
  f.ticks = () => {
    const span = hi - lo || 1, step0 = Math.pow(10, Math.floor(Math.log10(span / 5)));
    const step = [1, 2, 5, 10].map((k) => k * step0).find((st) => span / st <= 6);
    const t = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push(v);
    return t;
  };
  return f;
}

function extent(vals, log) {
  let v = vals.filter((x) => Number.isFinite(x) && (!log || x > 0));
  if (!v.length) return log ? [0.1, 10] : [0, 1];
  let lo = Math.min(...v), hi = Math.max(...v);
  if (log) {
    if (lo === hi) { lo /= 2; hi *= 2; }
    const pad = Math.pow(hi / lo, 0.05);
    return [lo / pad, hi * pad];
  }
  if (lo === hi) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.05;
  return [lo - pad, hi + pad];
}

/* An SVG frame with axes; returns {svg, x, y, plot} where plot is the group marks go into. */
function frame(opts) {
  const W = 560, H = 340, L = 64, R = 16, T = 12, B = 44;
  const x = scale(opts.xlog ? 'log' : 'lin', opts.xr[0], opts.xr[1], L, W - R);
  const y = scale(opts.ylog ? 'log' : 'lin', opts.yr[0], opts.yr[1], H - B, T);
  const svg = s('svg', { class: 'plot', viewBox: `0 0 ${W} ${H}`, role: 'img',
                         'aria-label': opts.title, id: opts.id });
  const grid = s('g', { class: 'grid' });
  const ax = s('g', { class: 'axis' });
  for (const t of x.ticks()) {
    grid.append(s('line', { x1: x(t), x2: x(t), y1: T, y2: H - B }));
    ax.append(s('line', { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4 }));
    ax.append(s('text', { x: x(t), y: H - B + 16, 'text-anchor': 'middle' }, fmt(t)));
  }
  for (const t of y.ticks()) {
    grid.append(s('line', { x1: L, x2: W - R, y1: y(t), y2: y(t) }));
    ax.append(s('line', { x1: L - 4, x2: L, y1: y(t), y2: y(t) }));
    ax.append(s('text', { x: L - 6, y: y(t) + 4, 'text-anchor': 'end' }, fmt(t)));
  }
  ax.append(s('path', { d: `M${L},${T}V${H - B}H${W - R}`, fill: 'none' }));
  svg.append(grid, ax,
    s('text', { class: 'label x-label', x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle' },
      opts.xlabel),
    s('text', { class: 'label y-label', x: 14, y: (T + H - B) / 2, 'text-anchor': 'middle',
                transform: `rotate(-90 14 ${(T + H - B) / 2})` }, opts.ylabel));
  const clip = opts.id + '-clip';
  svg.append(s('clipPath', { id: clip }, s('rect', { x: L, y: T, width: W - R - L, height: H - B - T })));
  const plot = s('g', { 'clip-path': `url(#${clip})` });
  svg.append(plot);
  return { svg, x, y, plot, box: { L, R: W - R, T, B: H - B } };
}

function mark(cx, cy, r, cls, id, title) {
  return s('circle', { class: 'mark ' + cls, cx: cx.toFixed(2), cy: cy.toFixed(2), r,
                       'data-candidate-id': id }, s('title', {}, title));
}

function empty(id, text) {
  return h('p', { class: 'muted', id }, text);
}

/* TPV against train loss (log-log), the max_train_loss threshold with its underfit region. */
function plotLoss(st) {
  const pts = st.scored.filter((it) => it.train_loss > 0 && it.value > 0);
  if (!pts.length) return empty('plot-loss', 'No scored candidate has metadata.train_loss > 0.');
  const thr = st.maxTrainLoss;
  const xs = pts.map((p) => p.train_loss);
  if (thr > 0) xs.push(thr);
  const f = frame({ id: 'plot-loss', title: 'TPV vs train loss', xlog: true, ylog: true,
                    xr: extent(xs, true), yr: extent(pts.map((p) => p.value), true),
                    xlabel: 'train loss (log)', ylabel: 'TPV (log)' });
  if (thr > 0) {
    const tx = f.x(thr);
    f.plot.append(s('rect', { class: 'region', x: tx, y: f.box.T, width: Math.max(0, f.box.R - tx),
                              height: f.box.B - f.box.T }),
                  s('line', { class: 'threshold', x1: tx, x2: tx, y1: f.box.T, y2: f.box.B }));
    f.svg.append(s('text', { class: 'label', x: Math.min(tx + 4, f.box.R - 60), y: f.box.T + 12 },
                   'underfit >', fmt(thr)));
  }
  for (const p of pts) {
    const under = p.flags.includes('underfit');
    f.plot.append(mark(f.x(p.train_loss), f.y(p.value), under ? 5 : 4.5,
                       (under ? 'underfit' : 'ok') + (p.candidate_id === st.selected ? ' sel' : ''),
                       p.candidate_id,
                       `${p.name}\nTPV ${fmt(p.value)}\ntrain_loss ${fmt(p.train_loss)}` +
                       (under ? '\nunderfit' : '')));
  }
  return f.svg;
}

/* One trajectory per run: TPV against epoch, the peak marked. */
function plotRuns(st) {
  const runs = st.ranking.trajectories || [];
  if (!runs.length) return empty('plot-runs', 'No run has two scored epochs (metadata.run, metadata.epoch).');
  const byRun = new Map(runs.map((r) => [r.run, []]));
  for (const p of st.scored) {
    const m = p.metadata || {};
    if (byRun.has(m.run) && typeof m.epoch === 'number' && p.value > 0) byRun.get(m.run).push(p);
  }
  const all = [...byRun.values()].flat();
  const f = frame({ id: 'plot-runs', title: 'TPV along each run', xlog: false, ylog: true,
                    xr: extent(all.map((p) => p.metadata.epoch), false),
                    yr: extent(all.map((p) => p.value), true),
                    xlabel: 'epoch', ylabel: 'TPV (log)' });
  const legend = h('div', { class: 'legend' });
  let k = 0;
  for (const r of runs) {
    const color = RUN_COLORS[k++ % RUN_COLORS.length];
    const pts = byRun.get(r.run).sort((a, b) => a.metadata.epoch - b.metadata.epoch);
    const d = pts.map((p, i) => (i ? 'L' : 'M') + f.x(p.metadata.epoch).toFixed(2) + ',' +
                                f.y(p.value).toFixed(2)).join('');
    const g = s('g', { class: 'run-group', 'data-run': r.run });
    g.append(s('path', { class: 'run', d, stroke: color }, s('title', {}, 'run ' + r.run)));
    for (const p of pts) {
      const peak = p.candidate_id === r.peak_candidate_id;
      const c = mark(f.x(p.metadata.epoch), f.y(p.value), peak ? 6 : 3.5,
                     (peak ? 'peak' : 'ok') + (p.flags.includes('underfit') ? ' underfit' : '') +
                     (p.candidate_id === st.selected ? ' sel' : ''), p.candidate_id,
                     `${p.name}\nrun ${r.run}, epoch ${fmt(p.metadata.epoch)}\nTPV ${fmt(p.value)}` +
                     (peak ? '\nTPV peak' : ''));
      if (!peak) c.setAttribute('fill', color);
      g.append(c);
    }
    f.plot.append(g);
    if (k > 10) continue; /* a legend of ten runs; the tooltips name the others */
    legend.append(h('span', { class: 'run-legend', 'data-run': r.run },
      s('svg', { width: 10, height: 10, viewBox: '0 0 10 10' }, s('circle', { cx: 5, cy: 5, r: 4, fill: color })),
      ` ${r.run}: ${pts.length} epochs, peak at ${fmt(r.peak_epoch)}`));
  }
  if (runs.length > 10) legend.append(h('span', { class: 'run-legend' }, `+ ${runs.length - 10} more runs`));
  return h('div', {}, f.svg, legend);
}

/* Fit against probe TPV (same noise model) with the y = x line: a stable estimate sits on it. */
function plotStability(st) {
  const pts = [];
  for (const c of st.candidates.values()) {
    const sc = c.scores || [];
    const fit = sc.find((x) => x.noise === st.by && x.split === 'fit');
    const probe = sc.find((x) => x.noise === st.by && x.split === 'probe');
    if (fit && probe && fit.value > 0 && probe.value > 0) pts.push({ c, fit: fit.value, probe: probe.value });
  }
  if (!pts.length) return empty('plot-stability', 'No candidate has both a fit and a probe score for ' + st.by + '.');
  const r = extent(pts.flatMap((p) => [p.fit, p.probe]), true);
  const f = frame({ id: 'plot-stability', title: 'fit vs probe TPV', xlog: true, ylog: true,
                    xr: r, yr: r, xlabel: `TPV on fit (${st.by}, log)`,
                    ylabel: `TPV on probe (log)` });
  f.plot.append(s('line', { class: 'diag', x1: f.x(r[0]), y1: f.y(r[0]), x2: f.x(r[1]), y2: f.y(r[1]) }));
  for (const p of pts) {
    const ratio = p.probe / p.fit;
    f.plot.append(mark(f.x(p.fit), f.y(p.probe), 4.5, 'ok' + (p.c.id === st.selected ? ' sel' : ''),
                       p.c.id, `${p.c.name}\nfit ${fmt(p.fit)}\nprobe ${fmt(p.probe)}\nprobe/fit ${fmt(ratio)}`));
  }
  return f.svg;
}

/* ---- tables ---- */

function flagsCell(flags) {
  return h('td', { class: 'flags' }, (flags || []).map((f) => h('span', { class: 'flag ' + f }, f)));
}

function metaKeys(items) {
  const keys = new Set();
  for (const it of items) for (const k of Object.keys(it.metadata || {})) keys.add(k);
  const first = ['train_loss', 'epoch', 'run'].filter((k) => keys.has(k));
  return first.concat([...keys].filter((k) => !first.includes(k)).sort());
}

/* A number, or a dash when the daemon has none (null: not computable, e.g. a score stored before
 * confidence existed; absent: an older daemon). */
const DASH = '\u2013';
function fmtOr(v) {
  return typeof v === 'number' && Number.isFinite(v) ? fmt(v) : DASH;
}

/* Within sampling error: another draw of probe inputs could well swap this item and the next. */
function pClose(p) {
  return typeof p === 'number' && p > 0.05 && p < 0.95;
}

/* p_lower_than_next to two decimals, the cue when the order with the next is not settled. */
function pCell(p) {
  if (typeof p !== 'number' || !Number.isFinite(p))
    return h('td', { class: 'num p-next' }, DASH);
  const close = pClose(p);
  return h('td', { class: 'num p-next' + (close ? ' close' : ''), 'data-value': p,
                   title: close ? 'within sampling error of the next candidate: another probe draw could swap them'
                                : 'P(TPV below the next candidate\'s)' },
           p.toFixed(2), close ? ' \u2248' : null);
}

function numCell(v, cls) {
  return h('td', { class: 'num ' + cls, 'data-value': typeof v === 'number' ? v : null }, fmtOr(v));
}

function rankingTable(st, items, id, withRank) {
  const keys = metaKeys(items);
  const head = h('tr', {}, withRank ? h('th', {}, '#') : null, h('th', {}, 'name'),
    h('th', {}, 'TPV'), h('th', { title: 'the estimator\'s own error (0 when exact)' }, 'stderr'),
    h('th', { title: 'standard error over the input sample' }, 'stderr_inputs'),
    withRank ? h('th', { title: 'probability that its TPV is below the next row\'s' }, 'p_lower_than_next') : null,
    h('th', {}, 'flags'), keys.map((k) => h('th', {}, k)));
  const body = h('tbody');
  for (const it of items) {
    const m = it.metadata || {};
    const cls = [it.candidate_id === st.selected ? 'sel' : '', withRank && pClose(it.p_lower_than_next) ? 'close' : '']
      .filter(Boolean).join(' ');
    body.append(h('tr', { 'data-candidate-id': it.candidate_id, class: cls || null,
                          onclick: () => app.view.select(it.candidate_id) },
      withRank ? h('td', { class: 'num rank' }, it.rank) : null,
      h('td', { class: 'name' }, it.name),
      h('td', { class: 'num value' }, fmt(it.value)),
      numCell(it.stderr, 'stderr'),
      numCell(it.stderr_inputs, 'stderr-inputs'),
      withRank ? pCell(it.p_lower_than_next) : null,
      flagsCell(it.flags),
      keys.map((k) => h('td', { class: typeof m[k] === 'number' ? 'num meta' : 'meta' }, fmt(m[k])))));
  }
  return h('div', { class: 'scroll' }, h('table', { id }, h('thead', {}, head), body));
}

function pendingTable(st, items) {
  const body = h('tbody');
  for (const it of items)
    body.append(h('tr', { 'data-candidate-id': it.candidate_id, onclick: () => app.view.select(it.candidate_id) },
      h('td', {}, it.name), h('td', {}, it.state)));
  return h('table', { id: 'pending' }, h('thead', {}, h('tr', {}, h('th', {}, 'name'), h('th', {}, 'state'))), body);
}

function kv(obj) {
  const dl = h('dl', { class: 'kv' });
  for (const [k, v] of Object.entries(obj || {}))
    dl.append(h('dt', {}, k), h('dd', {}, typeof v === 'object' && v !== null ? JSON.stringify(v) : fmt(v)));
  return dl;
}

function detailCard(st) {
  const c = st.candidates.get(st.selected);
  if (!c) return h('p', { class: 'muted' }, 'Click a row or a mark for a candidate\'s scores, job, details and JBR results.');
  const scores = h('tbody');
  for (const x of c.scores || [])
    scores.append(h('tr', {}, h('td', {}, x.noise), h('td', {}, x.kind), h('td', {}, x.split),
      h('td', { class: 'num' }, fmt(x.value)), numCell(x.stderr, 'stderr'),
      numCell(x.stderr_inputs, 'stderr-inputs'), h('td', {}, x.estimator),
      h('td', { class: 'num' }, fmt(x.samples)), h('td', { class: 'num' }, fmt(x.seed)),
      h('td', { class: 'meta' }, JSON.stringify(x.details || {}))));
  const job = st.job && st.job.id === c.job_id ? st.job : null;
  return h('div', { id: 'detail' },
    h('h2', {}, c.name, ' ', h('span', { class: 'muted' }, c.id)),
    kv({ state: c.state, source: c.source, created_at: c.created_at, job_id: c.job_id }),
    h('h2', {}, 'scores'),
    h('div', { class: 'scroll' }, h('table', { id: 'detail-scores' }, h('thead', {}, h('tr', {},
      ['noise', 'kind', 'split', 'value', 'stderr', 'stderr_inputs', 'estimator', 'samples', 'seed',
       'details'].map((t) => h('th', {}, t)))), scores)),
    h('h2', {}, 'metadata'), kv(c.metadata),
    c.metrics && Object.keys(c.metrics).length
      ? [h('h2', {}, 'metrics'), h('div', { id: 'detail-metrics' }, kv(c.metrics))] : null,
    c.stability ? [h('h2', {}, 'stability'), kv(c.stability)] : null,
    h('h2', {}, 'job'), job ? [kv({ state: job.state, kind: job.kind, progress: job.progress,
                                    attempts: job.attempts, started_at: job.started_at,
                                    finished_at: job.finished_at,
                                    error: job.error ? job.error.code + ': ' + job.error.message : null }),
                               job.result ? h('pre', {}, JSON.stringify(job.result, null, 1)) : null]
                            : h('p', { class: 'muted' }, c.job_id ? 'loading\u2026' : 'none'),
    jbrSection(st, c));
}

/* The candidate's newest JBR job (jbr_jobs comes newest first): its state and, once it
 * succeeded, its units by rank; "none" when the candidate has no JBR job. */
function jbrSection(st, c) {
  const jobs = c.jbr_jobs || [];
  const newest = jobs[0];
  const head = h('h2', {}, 'JBR');
  if (!newest) return h('div', { id: 'detail-jbr' }, head, h('p', { class: 'muted' }, 'none'));
  const job = st.jbr && st.jbr.id === newest.id ? st.jbr : null;
  const more = jobs.length > 1 ? `the newest of ${jobs.length} JBR jobs` : '';
  if (!job)
    return h('div', { id: 'detail-jbr', 'data-job-id': newest.id }, head,
             h('p', { class: 'muted' }, [newest.state, more, 'loading\u2026'].filter(Boolean).join(', ')));
  const res = job.result || {};
  const info = { state: job.state, job_id: job.id, created_at: job.created_at };
  if (job.finished_at) info.finished_at = job.finished_at;
  if (job.error) info.error = job.error.code + ': ' + job.error.message;
  if (job.state === 'running') info.progress = job.progress;
  for (const k of ['kept_samples', 'batches', 'batch_size', 'confidence'])
    if (res[k] !== undefined) info[k] = res[k];
  return h('div', { id: 'detail-jbr', 'data-job-id': job.id, 'data-state': job.state }, head,
    more ? h('p', { class: 'muted' }, more) : null, kv(info),
    job.state === 'succeeded' ? jbrTable(res) : null);
}

/* A JBR result's units in `order` (lowest score first: the safest to prune), at most JBR_ROWS
 * of them, with a note of how many there are. */
function jbrTable(res) {
  const units = Array.isArray(res.units) ? res.units : [];
  const order = Array.isArray(res.order) ? res.order : [];
  const body = h('tbody');
  const shown = Math.min(order.length, JBR_ROWS);
  for (let r = 0; r < shown; r++) {
    const u = units[order[r]] || {};
    body.append(h('tr', { 'data-unit': order[r] }, h('td', { class: 'num rank' }, r + 1),
      h('td', { class: 'layer' }, u.layer), h('td', { class: 'num index' }, u.index),
      numCell(u.score, 'score')));
  }
  const note = order.length > shown
    ? `the ${shown} lowest scores of ${order.length} units (lower = safer to prune)`
    : `${order.length} units, lowest score first (lower = safer to prune)`;
  return h('div', {}, h('p', { class: 'muted', id: 'jbr-note', 'data-units': order.length }, note),
    h('div', { class: 'scroll' }, h('table', { id: 'jbr-units' }, h('thead', {}, h('tr', {},
      ['rank', 'layer', 'index', 'score'].map((t) => h('th', {}, t)))), body)));
}

/* The metric keys some candidate carries (PUT .../metrics), sorted. */
function metricKeys(candidates) {
  const names = new Set();
  for (const c of candidates.values()) for (const k of Object.keys(c.metrics || {})) names.add(k);
  return [...names].sort();
}

/* The agreement route's answer (DESIGN.md section 5): Spearman, Kendall and their interval per
 * noise model and split, the recommended one marked, with a metric selector and a button that
 * ranks by the recommended noise model and split. */
function agreementTable(st, view) {
  const a = st.agreement;
  if (!a) return h('p', { class: 'muted' }, '');
  const rec = a.recommended || null;
  const isRec = (it) => !!rec && it.noise === rec.noise && it.split === rec.split;
  const body = h('tbody');
  for (const it of a.items || []) {
    const current = it.noise === st.by && it.split === st.split;
    body.append(h('tr', { 'data-noise': it.noise, 'data-split': it.split,
                          class: [isRec(it) ? 'recommended' : '', current ? 'current' : ''].filter(Boolean).join(' ') || null,
                          onclick: () => view.change({ by: it.noise, split: it.split }) },
      h('td', { class: 'noise' }, it.noise), h('td', { class: 'split' }, it.split),
      h('td', { class: 'num n' }, fmtOr(it.n)),
      numCell(it.spearman, 'spearman'), numCell(it.kendall, 'kendall'),
      h('td', { class: 'num ci' }, Array.isArray(it.ci) ? `[${fmtOr(it.ci[0])}, ${fmtOr(it.ci[1])}]` : DASH),
      h('td', { class: 'mark-cell' }, isRec(it) ? h('span', { class: 'flag recommended' }, 'recommended') : null,
        current ? h('span', { class: 'flag' }, 'ranking') : null)));
  }
  const metric = h('select', { id: 'sel-metric', onchange: (e) => view.setMetric(e.target.value) },
    metricKeys(st.candidates).map((k) => h('option', { value: k, selected: k === a.metric }, k)));
  const onRec = rec && rec.noise === st.by && rec.split === st.split;
  const use = h('button', { id: 'use-recommended', type: 'button', disabled: !rec || onRec,
                            onclick: () => rec && view.change({ by: rec.noise, split: rec.split }) },
    rec ? (onRec ? `ranking by ${rec.noise} / ${rec.split}` : `rank by ${rec.noise} / ${rec.split}`)
        : 'no recommendation');
  return h('div', {},
    h('div', { class: 'controls' }, h('label', {}, 'metric', metric), use,
      h('span', { class: 'muted' }, rec ? 'recommended: the highest lower bound of the Spearman interval'
                                        : 'no interval lies above 0: no noise model agrees clearly')),
    h('table', { id: 'agreement' }, h('thead', {}, h('tr', {},
      ['noise', 'split', 'n', 'spearman', 'kendall', '95% CI', ''].map((t) => h('th', {}, t)))), body));
}

/* ---- views ---- */

class StudyList {
  constructor(main) { this.main = main; this.ctl = new AbortController(); }
  stop() { this.ctl.abort(); }
  async start() {
    document.getElementById('crumb').textContent = 'studies';
    const studies = await apiAll('/v1/studies', this.ctl.signal);
    const body = h('tbody');
    const table = h('table', { id: 'studies' }, h('thead', {}, h('tr', {},
      ['name', 'candidates', 'version', 'rank_by', 'best candidate', 'best TPV', 'created'].map((t) => h('th', {}, t)))), body);
    this.main.replaceChildren(h('h1', {}, 'Studies'), h('div', { class: 'card' },
      studies.length ? table : h('p', { class: 'muted' }, 'No study yet.')));
    /* One request at a time: the best candidate of each study from its ranking. */
    for (const st of studies) {
      const row = h('tr', { 'data-study-id': st.id, onclick: () => app.go('/ui/studies/' + st.id) },
        h('td', {}, h('a', { href: '/ui/studies/' + encodeURIComponent(st.id) }, st.name)),
        h('td', { class: 'num count' }, '\u2026'), h('td', { class: 'num' }, st.version),
        h('td', {}, st.rank_by), h('td', { class: 'best' }, ''), h('td', { class: 'num' }, ''),
        h('td', { class: 'meta' }, st.created_at));
      body.append(row);
    }
    setLive('on');
    for (const st of studies) {
      const row = body.querySelector(`tr[data-study-id="${CSS.escape(st.id)}"]`);
      try {
        /* The same threshold the study page starts with, so "best" is never an underfit one. */
        const mtl = st.metadata && st.metadata.max_train_loss;
        const q = typeof mtl === 'number' && mtl > 0 ? '?max_train_loss=' + mtl : '';
        const r = (await apiGet(`/v1/studies/${encodeURIComponent(st.id)}/ranking${q}`, { signal: this.ctl.signal })).body;
        const n = r.items.length + r.excluded.length + r.pending.length;
        row.children[1].textContent = n;
        if (r.items.length) {
          row.children[4].textContent = r.items[0].name;
          row.children[5].textContent = fmt(r.items[0].value);
        }
      } catch (e) {
        if (e.name === 'AbortError' || e instanceof AuthError) throw e;
        row.children[1].textContent = '?';
      }
    }
  }
}

class StudyView {
  constructor(main, sid) {
    this.main = main;
    this.sid = sid;
    this.ctl = null;
    this.stopped = false;
    const q = new URLSearchParams(location.search);
    this.st = { by: q.get('by') || '', split: q.get('split') || 'probe',
                maxTrainLoss: q.get('max_train_loss') ? Number(q.get('max_train_loss')) : null,
                selected: q.get('candidate') || null, ranking: null, candidates: new Map(),
                etag: null, job: null, jbr: null, jbrStale: false, renderMs: null,
                metric: q.get('metric') || null, agreement: null, agreementKey: null };
  }

  stop() { this.stopped = true; if (this.ctl) this.ctl.abort(); }

  async start() {
    this.ctl = new AbortController();
    const study = (await apiGet(`/v1/studies/${encodeURIComponent(this.sid)}`, { signal: this.ctl.signal })).body;
    this.study = study;
    if (!this.st.by) this.st.by = study.rank_by;
    if (this.st.maxTrainLoss === null && study.metadata && typeof study.metadata.max_train_loss === 'number')
      this.st.maxTrainLoss = study.metadata.max_train_loss;
    document.getElementById('crumb').replaceChildren('/ ', study.name);
    this.layout();
    this.loop();
  }

  /* Builds the static parts once; render() fills the slots in place. */
  layout() {
    const st = this.st, study = this.study;
    const by = h('select', { id: 'sel-by', onchange: (e) => this.change({ by: e.target.value }) },
      study.noise_models.map((n) => h('option', { value: n.name, selected: n.name === st.by }, `${n.name} (${n.kind})`)));
    const split = h('select', { id: 'sel-split', onchange: (e) => this.change({ split: e.target.value }) },
      ['probe', 'fit'].map((x) => h('option', { value: x, selected: x === st.split }, x)));
    const mtl = h('input', { id: 'max-train-loss', type: 'number', step: 'any', min: '0', placeholder: 'none',
                             value: st.maxTrainLoss !== null ? st.maxTrainLoss : null,
                             onchange: (e) => this.change({ maxTrainLoss: e.target.value === '' ? null : Number(e.target.value) }) });
    this.slots = {
      summary: h('span', { class: 'muted', id: 'summary' }),
      ranking: h('div'), excluded: h('div'), pending: h('div'),
      loss: h('div'), runs: h('div'), stability: h('div'), detail: h('div'), error: h('p', { class: 'error', id: 'error' }),
      agreement: h('div'),
    };
    const card = (title, slot, id) => h('section', { class: 'card', id }, h('h2', {}, title), slot);
    this.main.replaceChildren(
      h('h1', {}, study.name, ' ', h('span', { class: 'muted' }, study.description || '')),
      h('div', { class: 'card controls' },
        h('label', {}, 'noise model', by), h('label', {}, 'split', split),
        h('label', {}, 'max_train_loss', mtl), this.slots.summary),
      this.slots.error,
      h('div', { class: 'grid' },
        card('TPV vs train loss', this.slots.loss, 'card-loss'),
        card('Runs: TPV along epochs', this.slots.runs, 'card-runs'),
        card('Stability: fit vs probe', this.slots.stability, 'card-stability')),
      h('div', { class: 'grid' },
        card('Ranking', this.slots.ranking, 'card-ranking'),
        card('Candidate', this.slots.detail, 'card-detail')),
      this.slots.agreementCard = card('Agreement with a labelled metric', this.slots.agreement, 'card-agreement'),
      card('Excluded (underfit: train_loss above max_train_loss)', this.slots.excluded, 'card-excluded'),
      card('Pending (queued, running, failed)', this.slots.pending, 'card-pending'));
    this.slots.agreementCard.hidden = true;
    bindTip(this.main);
    this.main.addEventListener('click', (ev) => {
      const m = ev.target.closest && ev.target.closest('svg .mark');
      if (m) this.select(m.getAttribute('data-candidate-id'));
    });
  }

  change(patch) {
    Object.assign(this.st, patch);
    this.st.etag = null;
    /* The selectors follow a change made elsewhere (the agreement's button or a row). */
    const by = document.getElementById('sel-by'), split = document.getElementById('sel-split');
    if (by && by.value !== this.st.by) by.value = this.st.by;
    if (split && split.value !== this.st.split) split.value = this.st.split;
    const q = new URLSearchParams();
    if (this.st.by !== this.study.rank_by) q.set('by', this.st.by);
    if (this.st.split !== 'probe') q.set('split', this.st.split);
    if (this.st.maxTrainLoss !== null) q.set('max_train_loss', this.st.maxTrainLoss);
    if (this.st.selected) q.set('candidate', this.st.selected);
    if (this.st.metric) q.set('metric', this.st.metric);
    history.replaceState(null, '', location.pathname + (q.toString() ? '?' + q : ''));
    if (this.ctl) this.ctl.abort(); /* the loop sees the abort and starts over with the new query */
  }

  /* A selection needs no new ranking: the loop fetches the candidate's job and redraws. */
  select(cid) {
    const etag = this.st.etag;
    this.st.selected = cid;
    this.st.job = null;
    this.st.jbr = null;
    this.change({});
    this.st.etag = etag;
  }

  /* Another metric needs no new ranking either: the loop reads its agreement and redraws. */
  setMetric(metric) {
    const etag = this.st.etag;
    this.st.metric = metric;
    this.change({});
    this.st.etag = etag;
  }

  rankingPath(wait) {
    const q = new URLSearchParams({ by: this.st.by, split: this.st.split });
    if (this.st.maxTrainLoss !== null && this.st.maxTrainLoss > 0) q.set('max_train_loss', this.st.maxTrainLoss);
    if (wait) q.set('wait', this.followingJbr() ? JBR_FOLLOW_S : WAIT_S);
    return `/v1/studies/${encodeURIComponent(this.sid)}/ranking?${q}`;
  }

  /* The one request in flight of this view: ranking (long-poll once it has an ETag), then on a
   * change the candidate list and the selected candidate's job. */
  async loop() {
    let failures = 0;
    while (!this.stopped) {
      this.ctl = new AbortController();
      const signal = this.ctl.signal;
      try {
        if (this.st.ranking && this.needJob()) {
          const c = this.st.candidates.get(this.st.selected);
          this.st.job = (await apiGet(`/v1/jobs/${encodeURIComponent(c.job_id)}`, { signal })).body;
          this.render();
          continue;
        }
        if (this.st.ranking && this.needJbr()) {
          const c = this.st.candidates.get(this.st.selected);
          this.st.jbrStale = false;
          this.st.jbr = (await apiGet(`/v1/jobs/${encodeURIComponent(c.jbr_jobs[0].id)}`, { signal })).body;
          this.render();
          continue;
        }
        if (this.st.ranking && this.needAgreement()) {
          this.st.agreement = await this.agreement(signal);
          this.render();
          continue;
        }
        const wait = !!this.st.etag;
        const r = await apiGet(this.rankingPath(wait), { etag: this.st.etag, signal });
        setLive('on');
        failures = 0;
        if (r.status === 304) {
          if (this.followingJbr()) this.st.jbrStale = true; /* read it again: it may have ended */
          continue;
        }
        const list = await apiAll(`/v1/studies/${encodeURIComponent(this.sid)}/candidates`, signal);
        this.st.ranking = r.body;
        this.st.etag = r.etag;
        this.st.candidates = new Map(list.map((c) => [c.id, c]));
        this.st.job = null; /* a version change may be the selected candidate's job moving on */
        this.st.jbrStale = true; /* ... or bring it a newer JBR job */
        this.slots.error.textContent = '';
        this.render();
        /* The agreement of this version (metrics and scores both bump it) is the loop's next
         * request, so the ranking shows first and only one request is ever in flight. */
      } catch (e) {
        if (this.stopped || e instanceof AuthError) return;
        if (e.name === 'AbortError') { this.render(); continue; }
        failures++;
        setLive('err');
        this.slots.error.textContent = 'Update failed: ' + e.message + ' (retrying)';
        await new Promise((res) => setTimeout(res, Math.min(10000, 500 * 2 ** failures)));
      }
    }
  }

  /* The metric the agreement is about: the one asked for while candidates still carry it, else
   * the first in name order; null when no candidate has metrics. */
  metricNow() {
    const keys = metricKeys(this.st.candidates);
    if (!keys.length) return null;
    return keys.includes(this.st.metric) ? this.st.metric : keys[0];
  }

  /* The agreement shown is for this study version and metric: a version change (new scores,
   * new metrics) or another metric asks for it again; no metrics, no request. */
  needAgreement() {
    if (this.noAgreement) return false;
    const metric = this.metricNow();
    if (!metric) {
      this.st.agreement = null;
      return false;
    }
    return this.st.agreementKey !== this.st.ranking.version + '\n' + metric;
  }

  /* How each noise model and split ranks against the current metric, null when the daemon has
   * no agreement route (then it is not asked again). */
  async agreement(signal) {
    const metric = this.metricNow();
    const version = this.st.ranking.version;
    try {
      const r = await apiGet(`/v1/studies/${encodeURIComponent(this.sid)}/agreement?metric=${encodeURIComponent(metric)}`, { signal });
      this.st.agreementKey = version + '\n' + metric;
      return r.body;
    } catch (e) {
      if (e.name === 'AbortError' || e instanceof AuthError) throw e;
      if (e.field === 'metric') { /* removed meanwhile: the next version's list says so */
        this.st.agreementKey = version + '\n' + metric;
        return null;
      }
      this.noAgreement = true;
      this.slots.error.textContent = 'Agreement unavailable: ' + e.message;
      return null;
    }
  }

  /* The selected candidate's newest JBR job, when it is not the one shown or the one shown may
   * have moved on (a new version, or a hold that ended while it was not over). */
  needJbr() {
    const c = this.st.selected && this.st.candidates.get(this.st.selected);
    const newest = c && c.jbr_jobs && c.jbr_jobs[0];
    if (!newest) return false;
    const shown = this.st.jbr;
    if (!shown || shown.id !== newest.id) return true;
    return this.st.jbrStale && !TERMINAL.includes(shown.state);
  }

  /* Whether the JBR job shown is still queued or running. */
  followingJbr() {
    const c = this.st.selected && this.st.candidates.get(this.st.selected);
    const newest = c && c.jbr_jobs && c.jbr_jobs[0];
    return !!(newest && this.st.jbr && this.st.jbr.id === newest.id &&
              !TERMINAL.includes(this.st.jbr.state));
  }

  needJob() {
    const c = this.st.selected && this.st.candidates.get(this.st.selected);
    return !!(c && c.job_id && (!this.st.job || this.st.job.id !== c.job_id));
  }

  render() {
    const st = this.st, r = st.ranking;
    if (!r) return;
    const t0 = performance.now();
    st.scored = r.items.concat(r.excluded).map((it) => {
      const tl = it.train_loss !== undefined ? it.train_loss : (it.metadata || {}).train_loss;
      return Object.assign({}, it, { train_loss: typeof tl === 'number' ? tl : undefined });
    });
    this.slots.summary.textContent = `version ${r.version} \u00b7 ${r.items.length} ranked \u00b7 ` +
      `${r.excluded.length} excluded \u00b7 ${r.pending.length} pending \u00b7 ${(r.trajectories || []).length} runs`;
    this.slots.ranking.replaceChildren(r.items.length ? rankingTable(st, r.items, 'ranking', true)
                                                      : h('p', { class: 'muted' }, 'No scored candidate yet.'));
    this.slots.excluded.replaceChildren(r.excluded.length ? rankingTable(st, r.excluded, 'excluded', false)
                                                          : h('p', { class: 'muted' }, st.maxTrainLoss ? 'None.' : 'Set max_train_loss to exclude underfit candidates.'));
    this.slots.pending.replaceChildren(r.pending.length ? pendingTable(st, r.pending) : h('p', { class: 'muted' }, 'None.'));
    this.slots.loss.replaceChildren(plotLoss(st));
    this.slots.runs.replaceChildren(plotRuns(st));
    this.slots.stability.replaceChildren(plotStability(st));
    this.slots.detail.replaceChildren(detailCard(st));
    this.slots.agreement.replaceChildren(agreementTable(st, this));
    this.slots.agreementCard.hidden = !st.agreement;
    st.renderMs = performance.now() - t0;
    document.body.setAttribute('data-version', r.version);
    document.body.setAttribute('data-render-ms', st.renderMs.toFixed(1));
    document.body.setAttribute('data-rendered-at', performance.now().toFixed(1)); /* since navigation */
  }
}

/* ---- routing ---- */

const app = {
  view: null,
  go(path) {
    history.pushState(null, '', path);
    this.route();
  },
  route() {
    if (this.view) this.view.stop();
    const main = document.getElementById('main');
    const m = location.pathname.match(/^\/ui\/studies\/([^/]+)\/?$/);
    this.view = m ? new StudyView(main, decodeURIComponent(m[1])) : new StudyList(main);
    const view = this.view;
    view.start().catch((e) => {
      if (e instanceof AuthError || e.name === 'AbortError' || view !== this.view) return;
      setLive('err');
      main.replaceChildren(h('p', { class: 'error', id: 'error' }, e.message));
    });
  },
};

/* Anything the policy blocks is counted where tests (and curious users) can see it. */
document.addEventListener('securitypolicyviolation', (e) => {
  const n = Number(document.documentElement.getAttribute('data-csp-violations') || 0) + 1;
  document.documentElement.setAttribute('data-csp-violations', n);
  console.error('CSP blocked', e.violatedDirective, e.blockedURI);
});
window.addEventListener('popstate', () => app.route());
document.addEventListener('click', (ev) => {
  const a = ev.target.closest && ev.target.closest('a[href^="/ui/"]');
  if (a && !ev.ctrlKey && !ev.metaKey) { ev.preventDefault(); app.go(a.getAttribute('href')); }
});
app.route();
