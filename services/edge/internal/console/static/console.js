'use strict';
// The console opens GET /v1/stream on this page's origin with the browser's
// own EventSource, the token in access_token (EventSource cannot set
// headers). It tracks the last cursor (the SSE id): EventSource resends it
// as Last-Event-ID when it reconnects by itself, and Resume passes it as
// last_event_id, so that nothing is lost or repeated.
(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $('form'), token: $('token'), types: $('types'), filter: $('filter'),
    connect: $('connect'), pause: $('pause'), resume: $('resume'), clear: $('clear'),
    state: $('state'), count: $('count'), notices: $('notices'), opens: $('opens'),
    cursor: $('cursor'), message: $('message'), warning: $('warning'), events: $('events'),
  };
  const MAX_ROWS = 5000; // the oldest rows go first past this
  let es = null;      // the EventSource, null when none
  let cursor = '';    // the last cursor received
  let stream = null;  // {token, types, filter} of the current stream
  let count = 0, notices = 0, opens = 0;

  // A link may carry the settings in its fragment, which the browser never
  // sends to a server: #token=...&types=...&filter=...
  function fromFragment() {
    if (location.hash.length < 2) return;
    const p = new URLSearchParams(location.hash.slice(1));
    for (const k of ['token', 'types', 'filter']) {
      if (p.has(k)) els[k].value = p.get(k);
    }
    // Out of the address bar and the history, now that it is in the form.
    history.replaceState(null, '', location.pathname + location.search);
  }

  function setState(state, message) {
    els.state.textContent = state;
    els.state.dataset.state = state;
    els.message.textContent = message || '';
    const live = state === 'open' || state === 'connecting' || state === 'reconnecting';
    els.pause.disabled = !live;
    els.resume.disabled = live || !stream;
  }

  function setCursor(id) {
    cursor = id;
    els.cursor.textContent = id;
  }

  function typeList(s) {
    return s.split(',').map((t) => t.trim()).filter((t) => t !== '');
  }

  function streamURL(s, after) {
    const q = new URLSearchParams();
    q.set('types', typeList(s.types).join(','));
    if (s.filter.trim() !== '') q.set('filter', s.filter.trim());
    if (after) q.set('last_event_id', after);
    q.set('access_token', s.token);
    return '/v1/stream?' + q.toString();
  }

  function row(cls, cells) {
    const li = document.createElement('li');
    li.className = cls;
    for (const [name, text] of cells) {
      const span = document.createElement('span');
      span.className = name;
      span.textContent = text;
      li.appendChild(span);
    }
    els.events.appendChild(li);
    while (els.events.childElementCount > MAX_ROWS) els.events.firstElementChild.remove();
    li.scrollIntoView({ block: 'nearest' });
    return li;
  }

  function marker(text) {
    const li = row('marker', [['text', text]]);
    li.dataset.testid = 'marker';
  }

  function show(kind, e) {
    let ce = null;
    try { ce = JSON.parse(e.data); } catch (_) { /* shown raw */ }
    const isNotice = kind === 'notice';
    const type = e.type === 'message' ? (ce && ce.type) || 'message' : e.type;
    const time = (ce && typeof ce.time === 'string' && ce.time) || new Date().toISOString();
    let data = e.data;
    if (ce && !isNotice && typeof ce === 'object' && 'data' in ce) data = JSON.stringify(ce.data);
    const li = row(isNotice ? 'notice' : 'event', [
      ['cursor', e.lastEventId], ['type', type], ['time', time], ['data', data],
    ]);
    li.dataset.testid = isNotice ? 'notice' : 'event';
    li.dataset.cursor = e.lastEventId;
    li.dataset.type = type;
    if (ce && typeof ce.id === 'string') li.dataset.eventId = ce.id;
    if (e.lastEventId) setCursor(e.lastEventId);
    if (isNotice) {
      notices++;
      els.notices.textContent = String(notices);
    } else {
      count++;
      els.count.textContent = String(count);
    }
  }

  // why asks the edge once more, with fetch, why it refused the stream:
  // EventSource shows no status nor body.
  async function why(url) {
    const ctl = new AbortController();
    try {
      const headers = { Accept: 'text/event-stream' };
      if (cursor) headers['Last-Event-ID'] = cursor;
      const res = await fetch(url, { headers, signal: ctl.signal, cache: 'no-store' });
      if (res.ok) return 'the stream ended; Resume to continue from the last cursor';
      const body = await res.text();
      let msg = body;
      try { msg = JSON.parse(body).message || body; } catch (_) { /* plain text */ }
      return `${res.status}: ${msg}`;
    } catch (err) {
      return 'the edge is unreachable';
    } finally {
      ctl.abort();
    }
  }

  function open(after) {
    close();
    const url = streamURL(stream, after);
    const src = new EventSource(url);
    es = src;
    setState('connecting');
    src.onopen = () => {
      if (es !== src) return;
      opens++;
      els.opens.textContent = String(opens);
      if (opens > 1) marker(`connected${cursor ? ' after ' + cursor : ''}`);
      setState('open');
    };
    src.onerror = async () => {
      if (es !== src) return;
      if (src.readyState === EventSource.CONNECTING) {
        // EventSource reconnects by itself, sending Last-Event-ID.
        setState('reconnecting', '');
        return;
      }
      es = null;
      setState('closed', 'checking why...');
      const reason = await why(url);
      if (es === null && els.state.dataset.state === 'closed') setState('closed', reason);
    };
    src.onmessage = (e) => show('event', e);
    const patterns = [];
    for (const t of typeList(stream.types)) {
      if (t.includes('*')) patterns.push(t);
      else if (t !== 'message') src.addEventListener(t, (e) => show('event', e));
    }
    // The edge names each event by its type, and EventSource hands over
    // only the names it listens for: a pattern matches on the edge, but
    // its events cannot be caught here.
    els.warning.textContent = patterns.length === 0 ? '' :
      `not shown: events of ${patterns.join(', ')} (EventSource needs exact type names; list them)`;
    for (const t of ['herald.lagged', 'herald.gap', 'herald.notice']) {
      src.addEventListener(t, (e) => show('notice', e));
    }
  }

  function close() {
    if (es) {
      es.close();
      es = null;
    }
  }

  els.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const s = { token: els.token.value.trim(), types: els.types.value, filter: els.filter.value };
    if (s.token === '' || typeList(s.types).length === 0) {
      setState(els.state.dataset.state, 'give a token (or key) and at least one type');
      return;
    }
    // A new stream starts afresh, from now.
    stream = s;
    setCursor('');
    opens = 0;
    els.opens.textContent = '0';
    els.clear.click();
    open('');
  });
  els.pause.addEventListener('click', () => {
    close();
    setState('paused');
    marker(`paused${cursor ? ' at ' + cursor : ''}`);
  });
  els.resume.addEventListener('click', () => {
    if (!stream) return;
    marker(`resumed${cursor ? ' after ' + cursor : ''}`);
    open(cursor);
  });
  els.clear.addEventListener('click', () => {
    els.events.replaceChildren();
    count = 0;
    notices = 0;
    els.count.textContent = '0';
    els.notices.textContent = '0';
  });

  fromFragment();
  setState('idle');
})();
