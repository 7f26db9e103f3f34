// The live map page. Plain JavaScript over the REST API, no framework.
//
// Signed in: the viewer's own devices (GET /api/v1/devices + /api/v1/map/mine)
// and the shared map (GET /api/v1/map, clustered when zoomed out), kept live
// over Server-Sent Events opened with one-time tickets: the bearer token goes
// only in Authorization headers, never in a URL. Signed out: the shared map
// when the server lets anonymous viewers read it (page config
// `anonymous_map`), next to the sign-in form. At /s/{token}: one shared
// device, read with the link's token in a header.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'mapcast.token';
  // Streams per page: tickets and streams are bounded per user on the server.
  const MAX_DEVICE_STREAMS = 8;
  const SHARE_POLL_MS = 1000;
  const RECONNECT_MAX_MS = 15000;
  // The zoom at and above which the map is asked for unclustered.
  const CLUSTER_BELOW_ZOOM = 12;

  const shareToken = location.pathname.startsWith('/s/')
    ? decodeURIComponent(location.pathname.slice(3))
    : null;

  const app = {
    config: null,
    map: null,
    token: null,
    me: null,
    // key -> { key, deviceId, name, kind, lon, lat, props, own, marker, item }
    devices: new Map(),
    clusters: [],
    streams: [],
    reconnectDelay: 1000,
    reconnectTimer: null,
    reconnecting: false,
    refreshTimer: null,
    selected: null,
    trail: null,
    generation: 0,
    // The version of the whole (unclustered) map the page shows, so a new
    // version is applied as a `?since=` diff; null: fetch it whole.
    mapVersion: null,
    diffing: false,
    diffAgain: false,
    ownIds: new Set(),
    // API requests sent and not answered yet.
    pending: 0,
  };

  function setStatus(state, text) {
    const el = $('status');
    el.dataset.state = state;
    el.textContent = text;
    document.body.classList.toggle('stale', state === 'stale');
  }

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (app.token) opts.headers.Authorization = 'Bearer ' + app.token;
    if (opts.json !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(opts.json);
      delete opts.json;
    }
    app.pending += 1;
    let res;
    try {
      res = await fetch(path, opts);
    } finally {
      app.pending -= 1;
    }
    if (res.status === 401 && app.token && !shareToken) {
      signedOut('Your session has ended: sign in again.');
      throw new Error('signed out');
    }
    return res;
  }

  async function problem(res) {
    try {
      const body = await res.json();
      return body.detail || body.title || res.statusText;
    } catch (_) {
      return res.statusText || String(res.status);
    }
  }

  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const ago = Math.round((Date.now() - d.getTime()) / 1000);
    const rel = ago < 60 ? ago + ' s ago' : ago < 3600 ? Math.round(ago / 60) + ' min ago'
      : ago < 86400 ? Math.round(ago / 3600) + ' h ago' : Math.round(ago / 86400) + ' d ago';
    return d.toLocaleString() + ' (' + rel + ')';
  }

  function shortTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? '—' : d.toLocaleTimeString();
  }

  // ---- the map -----------------------------------------------------------

  function initMap() {
    const cfg = app.config;
    app.map = L.map('map', { maxZoom: cfg.max_zoom, worldCopyJump: true }).setView([20, 0], 2);
    if (cfg.tile_url) {
      L.tileLayer(cfg.tile_url, {
        maxZoom: cfg.max_zoom,
        attribution: cfg.tile_attribution || '',
      }).addTo(app.map);
    }
    app.map.on('zoomend', () => {
      if (!shareToken && (app.token || cfg.anonymous_map)) scheduleRefresh(0);
    });
  }

  function deviceLabel(d) {
    return d.name || 'Device ' + d.key;
  }

  function placeDevice(d) {
    if (d.lat === undefined || d.lon === undefined) {
      if (d.marker) { d.marker.remove(); d.marker = null; }
      return;
    }
    const ll = [d.lat, d.lon];
    if (!d.marker) {
      d.marker = L.circleMarker(ll, { radius: 8, className: 'device-marker' })
        .bindTooltip(deviceLabel(d))
        .on('click', () => select(d.key));
      d.marker.addTo(app.map);
    } else {
      d.marker.setLatLng(ll);
      d.marker.setTooltipContent(deviceLabel(d));
    }
    const path = d.marker.getElement && d.marker.getElement();
    if (path) {
      path.setAttribute('data-device', d.key);
      path.classList.toggle('selected', app.selected === d.key);
    }
  }

  function applyFix(d, coords, props) {
    const moved = d.lon !== coords[0] || d.lat !== coords[1];
    d.lon = coords[0];
    d.lat = coords[1];
    d.props = Object.assign({}, d.props, props || {});
    placeDevice(d);
    renderItem(d);
    if (app.selected === d.key) {
      renderDetails(d);
      // The same fix comes again with each map refresh: the trail grows
      // only by new places.
      if (moved) extendTrail(d);
    }
  }

  function clearClusters() {
    app.clusters.forEach((m) => m.remove());
    app.clusters = [];
  }

  // ---- the device list -----------------------------------------------------

  function renderItem(d) {
    if (!d.item) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'device';
      b.dataset.device = d.key;
      const name = document.createElement('span');
      name.className = 'name';
      const seen = document.createElement('span');
      seen.className = 'seen';
      b.append(name, seen);
      b.addEventListener('click', () => select(d.key, true));
      li.append(b);
      $('devices').append(li);
      d.item = b;
    }
    d.item.querySelector('.name').textContent = deviceLabel(d);
    const seen = d.props && (d.props.last_seen || d.props.received_at || d.props.ts);
    d.item.querySelector('.seen').textContent = seen ? shortTime(seen) : 'no position';
    d.item.setAttribute('aria-current', app.selected === d.key ? 'true' : 'false');
  }

  function removeDevice(key) {
    const d = app.devices.get(key);
    if (!d) return;
    if (d.marker) d.marker.remove();
    if (d.item) d.item.parentElement.remove();
    app.devices.delete(key);
    if (app.selected === key) closeDetails();
  }

  function resetDevices() {
    for (const key of Array.from(app.devices.keys())) removeDevice(key);
    clearClusters();
  }

  function upsert(key, fields) {
    let d = app.devices.get(key);
    if (!d) {
      d = { key, props: {} };
      app.devices.set(key, d);
    }
    Object.assign(d, fields);
    return d;
  }

  // ---- details and trail -----------------------------------------------------

  function select(key, focus) {
    const previous = app.selected;
    app.selected = key;
    for (const k of [previous, key]) {
      const d = app.devices.get(k);
      if (d) { placeDevice(d); renderItem(d); }
    }
    const d = app.devices.get(key);
    if (!d) return;
    $('details').hidden = false;
    renderDetails(d);
    if (d.lat !== undefined) app.map.panTo([d.lat, d.lon]);
    if (focus) $('details-title').focus();
    loadPosition(d);
    loadTrail(d);
    loadShares(d);
  }

  // The name, last-seen time and latest fix of one device: the map carries
  // neither names nor last-seen times. Asked only where the server answers
  // (own devices, or public ones when the map shows device ids), and only
  // for a device with a position, so it never fails for a known reason.
  async function loadPosition(d) {
    const id = d.deviceId || d.key;
    if (d.lat === undefined || !(d.own || app.config.device_positions)) return;
    const generation = app.generation;
    let res;
    try {
      res = await api('/api/v1/devices/' + encodeURIComponent(id) + '/position');
    } catch (_) {
      return;
    }
    if (!res.ok || generation !== app.generation || !app.devices.has(d.key)) return;
    const f = await res.json();
    if (f.name) d.name = f.name;
    applyFix(d, f.geometry.coordinates, f.properties);
    if (app.selected === d.key) renderDetails(d);
  }

  function closeDetails() {
    const key = app.selected;
    app.selected = null;
    $('details').hidden = true;
    if (app.trail) { app.trail.remove(); app.trail = null; }
    const d = app.devices.get(key);
    if (d) { placeDevice(d); renderItem(d); if (d.item) d.item.focus(); }
  }

  function renderDetails(d) {
    $('details-title').textContent = deviceLabel(d);
    const p = d.props || {};
    const rows = [
      ['Kind', d.kind || p.kind || '—'],
      ['Last seen', fmtTime(p.last_seen || p.received_at || p.ts)],
      ['Fix taken', fmtTime(p.ts)],
      ['Speed', p.speed !== undefined ? (p.speed * 3.6).toFixed(1) + ' km/h' : '—'],
      ['Battery', p.battery !== undefined ? Math.round(p.battery) + ' %' : '—'],
      ['Position', d.lat !== undefined ? d.lat.toFixed(5) + ', ' + d.lon.toFixed(5) : '—'],
    ];
    const dl = $('details-list');
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      dd.dataset.field = k.toLowerCase().replace(' ', '-');
      dl.append(dt, dd);
    }
  }

  async function loadTrail(d) {
    if (app.trail) { app.trail.remove(); app.trail = null; }
    const info = $('trail-info');
    $('trail-controls').hidden = !!shareToken;
    if (shareToken) return;
    if (!d.deviceId) {
      info.textContent = 'No trail: the history of this device is not yours to read.';
      return;
    }
    info.textContent = 'Loading trail…';
    const since = Date.now() - Number($('trail-period').value);
    const points = [];
    let cursor = null;
    const key = d.key;
    try {
      // Newest first, a few pages at most: a trail, not an export.
      for (let page = 0; page < 5; page++) {
        let path = '/api/v1/history/devices/' + encodeURIComponent(d.deviceId) +
          '/location?limit=1000&since=' + since;
        if (cursor) path += '&cursor=' + encodeURIComponent(cursor);
        const res = await api(path);
        if (!res.ok) {
          info.textContent = 'No trail: ' + (await problem(res));
          return;
        }
        const body = await res.json();
        for (const item of body.items) {
          const c = item.payload && item.payload.geometry && item.payload.geometry.coordinates;
          if (Array.isArray(c)) points.push([c[1], c[0]]);
        }
        cursor = body.next_cursor;
        if (!cursor) break;
      }
    } catch (_) {
      info.textContent = 'The trail could not be loaded.';
      return;
    }
    if (app.selected !== key) return;
    points.reverse();
    app.trail = L.polyline(points, { className: 'trail' }).addTo(app.map);
    info.textContent = points.length + ' positions';
    if (points.length > 1) app.map.fitBounds(app.trail.getBounds(), { maxZoom: 16 });
  }

  function extendTrail(d) {
    if (app.trail && d.lat !== undefined) {
      app.trail.addLatLng([d.lat, d.lon]);
      const n = app.trail.getLatLngs().length;
      $('trail-info').textContent = n + ' positions';
    }
  }

  // ---- share links -------------------------------------------------------------

  async function loadShares(d) {
    const box = $('share-controls');
    box.hidden = !(d.own && d.deviceId) || !!shareToken;
    $('shares').replaceChildren();
    if (box.hidden) return;
    try {
      const res = await api('/api/v1/devices/' + encodeURIComponent(d.deviceId) + '/shares');
      if (!res.ok) return;
      const body = await res.json();
      for (const s of body.items.filter((s) => s.live)) addShareItem(d, s, null);
    } catch (_) { /* the list stays empty */ }
  }

  function addShareItem(d, s, url) {
    const li = document.createElement('li');
    li.dataset.share = s.id;
    const text = document.createElement('span');
    text.textContent = 'until ' + new Date(s.expires_at).toLocaleString() + ' ';
    li.append(text);
    if (url) {
      const input = document.createElement('input');
      input.readOnly = true;
      input.value = url;
      input.setAttribute('aria-label', 'Share link');
      li.append(input);
    }
    const revoke = document.createElement('button');
    revoke.type = 'button';
    revoke.textContent = 'Revoke';
    revoke.addEventListener('click', async () => {
      const res = await api('/api/v1/devices/' + encodeURIComponent(d.deviceId) +
        '/shares/' + encodeURIComponent(s.id), { method: 'DELETE' });
      if (res.ok || res.status === 404) li.remove();
    });
    li.append(revoke);
    $('shares').prepend(li);
  }

  async function createShare() {
    const d = app.devices.get(app.selected);
    if (!d || !d.deviceId) return;
    const res = await api('/api/v1/devices/' + encodeURIComponent(d.deviceId) + '/shares', {
      method: 'POST',
      json: { expires_in_secs: Number($('share-period').value) },
    });
    if (!res.ok) {
      $('trail-info').textContent = 'No link: ' + (await problem(res));
      return;
    }
    const s = await res.json();
    addShareItem(d, s, location.origin + s.url);
  }

  // ---- loading the map ---------------------------------------------------------

  async function refresh() {
    const generation = app.generation;
    const zoom = app.map.getZoom();
    // Signed out, only the shared map: the rest needs a token.
    const [devicesRes, mineRes, mapRes] = await Promise.all([
      app.token ? api('/api/v1/devices') : null,
      app.token ? api('/api/v1/map/mine') : null,
      api('/api/v1/map' + (zoom < CLUSTER_BELOW_ZOOM ? '?zoom=' + zoom : '')),
    ]);
    if (generation !== app.generation) return;
    const seen = new Set();
    const ownIds = new Set();
    if (devicesRes && devicesRes.ok) {
      for (const dev of (await devicesRes.json()).items) {
        // An admin lists every device; "own" means the viewer may manage it.
        upsert(dev.id, { deviceId: dev.id, name: dev.name, kind: dev.kind, own: true,
          mapId: dev.map_id || dev.id });
        ownIds.add(dev.id);
        if (dev.map_id) ownIds.add(dev.map_id);
        seen.add(dev.id);
      }
    }
    if (mineRes && mineRes.ok) {
      for (const f of (await mineRes.json()).features) {
        const d = app.devices.get(String(f.id));
        if (d) applyFix(d, f.geometry.coordinates, f.properties);
      }
    }
    app.ownIds = ownIds;
    clearClusters();
    app.mapVersion = null;
    if (mapRes.ok) {
      const fc = await mapRes.json();
      if (!fc.clustered && typeof fc.version === 'number') app.mapVersion = fc.version;
      for (const f of fc.features) {
        const id = String(f.id);
        if (ownIds.has(id)) continue;
        if (f.properties && f.properties.cluster) {
          const m = L.circleMarker([f.geometry.coordinates[1], f.geometry.coordinates[0]], {
            radius: Math.min(24, 8 + Math.log2(f.properties.count) * 3),
            className: 'cluster-marker',
          }).bindTooltip(f.properties.count + ' devices', { permanent: true, direction: 'center',
            className: 'cluster-count' });
          m.on('click', () => app.map.setView(m.getLatLng(), Math.min(app.map.getZoom() + 2,
            app.config.max_zoom)));
          m.addTo(app.map);
          app.clusters.push(m);
          continue;
        }
        const d = upsert(id, { own: false });
        seen.add(id);
        applyFix(d, f.geometry.coordinates, f.properties);
      }
    } else if (mapRes.status !== 503 && mapRes.status !== 403) {
      setStatus('error', 'The map could not be loaded: ' + (await problem(mapRes)));
    }
    for (const key of Array.from(app.devices.keys())) {
      if (!seen.has(key)) removeDevice(key);
    }
  }

  // A new map version: only what changed since the one shown (the added and
  // moved devices' Features, the removed ids); the whole map only when the
  // view is clustered or the server no longer keeps that version.
  async function applyMapDiff() {
    const generation = app.generation;
    const since = app.mapVersion;
    const res = await api('/api/v1/map?since=' + since);
    if (generation !== app.generation || since !== app.mapVersion) return;
    if (!res.ok) {
      scheduleRefresh(0);
      return;
    }
    const diff = await res.json();
    for (const f of diff.features) {
      const id = String(f.id);
      if (app.ownIds.has(id)) continue;
      applyFix(upsert(id, { own: false }), f.geometry.coordinates, f.properties);
    }
    for (const id of diff.removed) {
      if (!app.ownIds.has(String(id))) removeDevice(String(id));
    }
    app.mapVersion = diff.version;
  }

  // One diff at a time; versions announced meanwhile are fetched after it.
  async function onMapVersion() {
    if (app.mapVersion === null) {
      scheduleRefresh(100);
      return;
    }
    if (app.diffing) {
      app.diffAgain = true;
      return;
    }
    app.diffing = true;
    try {
      do {
        app.diffAgain = false;
        await applyMapDiff();
      } while (app.diffAgain && app.mapVersion !== null);
    } catch (_) {
      scheduleRefresh(0);
    } finally {
      app.diffing = false;
    }
  }

  function scheduleRefresh(delay) {
    clearTimeout(app.refreshTimer);
    app.refreshTimer = setTimeout(() => {
      refresh().catch(() => { /* a stream error will mark the page stale */ });
    }, delay);
  }

  // ---- live updates -------------------------------------------------------------

  function closeStreams() {
    app.streams.forEach((s) => s.close());
    app.streams = [];
    clearTimeout(app.reconnectTimer);
    app.reconnecting = false;
  }

  function streamFilters() {
    if (app.me && app.me.role === 'admin') return ['devices/+/location', 'map/version'];
    const own = Array.from(app.devices.values()).filter((d) => d.own && d.deviceId)
      .slice(0, MAX_DEVICE_STREAMS)
      .map((d) => 'devices/' + d.deviceId + '/location');
    return own.concat(['map/version']);
  }

  async function openStreams() {
    closeStreams();
    const generation = app.generation;
    let opened = 0;
    const filters = streamFilters();
    try {
      for (const filter of filters) {
        let url = '/api/v1/subscribe?filter=' + encodeURIComponent(filter);
        // Signed out there is no token to keep out of the URL: no ticket.
        if (app.token) {
          const res = await api('/api/v1/subscribe/tickets', { method: 'POST', json: { filter } });
          if (!res.ok) throw new Error(await problem(res));
          const t = await res.json();
          url += '&ticket=' + encodeURIComponent(t.ticket);
        }
        if (generation !== app.generation) return;
        const es = new EventSource(url);
        es.onopen = () => {
          opened += 1;
          if (opened === filters.length) {
            app.reconnectDelay = 1000;
            setStatus('live', 'Live');
          }
        };
        es.onmessage = (ev) => onEvent(ev);
        // A ticket works once: EventSource's own retry would be refused, so
        // every drop reconnects with fresh tickets.
        es.onerror = () => streamDropped(generation);
        app.streams.push(es);
      }
    } catch (_) {
      streamDropped(generation);
    }
  }

  function streamDropped(generation) {
    if (generation !== app.generation || app.reconnecting) return;
    closeStreams();
    app.reconnecting = true;
    setStatus('stale', 'Stale: reconnecting…');
    const delay = app.reconnectDelay;
    app.reconnectDelay = Math.min(app.reconnectDelay * 2, RECONNECT_MAX_MS);
    app.reconnectTimer = setTimeout(async () => {
      app.reconnecting = false;
      if (generation !== app.generation) return;
      try {
        await refresh();
      } catch (_) {
        streamDropped(generation);
        return;
      }
      await openStreams();
    }, delay);
  }

  function onEvent(ev) {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.topic === 'map/version') {
      onMapVersion();
      return;
    }
    const parts = msg.topic.split('/');
    if (parts.length === 3 && parts[0] === 'devices' && parts[2] === 'location') {
      const d = app.devices.get(parts[1]);
      const p = msg.payload;
      if (!p || !p.geometry || !Array.isArray(p.geometry.coordinates)) return;
      const props = Object.assign({}, p.properties || {}, { received_at: new Date().toISOString() });
      if (typeof props.ts === 'number') props.ts = new Date(props.ts).toISOString();
      if (d) applyFix(d, p.geometry.coordinates, props);
      else if (app.me && app.me.role === 'admin') scheduleRefresh(100);
    }
  }

  // ---- signing in and out ----------------------------------------------------------

  function signedOut(message) {
    app.generation += 1;
    closeStreams();
    clearTimeout(app.refreshTimer);
    app.token = null;
    app.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    resetDevices();
    closeDetails();
    $('account').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    setStatus('idle', 'Signed out');
    $('username').focus();
    if (app.config.anonymous_map) publicMap();
  }

  // Signed out on a server that lets anyone read the map: show it, live.
  async function publicMap() {
    const generation = app.generation;
    try {
      await refresh();
    } catch (_) {
      streamDropped(generation);
      return;
    }
    if (generation === app.generation) await openStreams();
  }

  async function signedIn() {
    app.generation += 1;
    // The public map's streams, if any, end here.
    closeStreams();
    const res = await api('/api/v1/sessions/current');
    if (!res.ok) throw new Error(await problem(res));
    app.me = await res.json();
    $('who').textContent = app.me.username;
    $('signin').hidden = true;
    $('account').hidden = false;
    setStatus('idle', 'Connecting…');
    await refresh();
    await openStreams();
  }

  async function onSignIn(ev) {
    ev.preventDefault();
    $('signin-error').textContent = '';
    const res = await fetch('/api/v1/sessions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username: $('username').value, password: $('password').value }),
    });
    if (!res.ok) {
      $('signin-error').textContent = await problem(res);
      return;
    }
    app.token = (await res.json()).token;
    sessionStorage.setItem(TOKEN_KEY, app.token);
    $('password').value = '';
    try {
      await signedIn();
    } catch (e) {
      signedOut(String(e.message || e));
    }
  }

  async function onSignOut() {
    // Quiet the page first and let requests already sent with the token
    // finish (briefly): one answered after the revocation would fail.
    app.generation += 1;
    closeStreams();
    clearTimeout(app.refreshTimer);
    for (let i = 0; app.pending > 0 && i < 100; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // The token is revoked on the server, not just forgotten here.
    try { await api('/api/v1/sessions/current', { method: 'DELETE' }); } catch (_) { /* gone */ }
    signedOut();
  }

  // ---- a shared device -------------------------------------------------------------

  async function pollShare() {
    let res;
    try {
      res = await fetch('/api/v1/shared/position', {
        headers: { 'X-Share-Token': shareToken },
        cache: 'no-store',
      });
    } catch (_) {
      setStatus('stale', 'Stale: reconnecting…');
      setTimeout(pollShare, SHARE_POLL_MS * 2);
      return;
    }
    if (res.status === 410) {
      // The link is over: the server's expired page says so.
      location.replace(location.pathname);
      return;
    }
    if (!res.ok) {
      setStatus('stale', 'Stale: reconnecting…');
      setTimeout(pollShare, SHARE_POLL_MS * 2);
      return;
    }
    const s = await res.json();
    const first = !app.devices.has('shared');
    const d = upsert('shared', { name: s.name, kind: s.kind, own: false });
    if (s.position) {
      const p = s.position;
      applyFix(d, [p.lon, p.lat], p);
      if (first) app.map.setView([p.lat, p.lon], Math.min(15, app.config.max_zoom));
    } else {
      renderItem(d);
    }
    setStatus('live', 'Live · shared until ' + new Date(s.expires_at).toLocaleString());
    setTimeout(pollShare, SHARE_POLL_MS);
  }

  // ---- start ---------------------------------------------------------------------

  async function start() {
    const res = await fetch('/api/v1/page/config');
    app.config = await res.json();
    initMap();
    $('details-close').addEventListener('click', closeDetails);
    $('trail-period').addEventListener('change', () => {
      const d = app.devices.get(app.selected);
      if (d) loadTrail(d);
    });
    $('share-create').addEventListener('click', createShare);
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && app.selected) closeDetails();
    });
    if (shareToken) {
      document.title = 'Shared device · mapcast';
      $('devices-title').textContent = 'Shared device';
      pollShare();
      return;
    }
    $('signin').addEventListener('submit', onSignIn);
    $('signout').addEventListener('click', onSignOut);
    app.token = sessionStorage.getItem(TOKEN_KEY);
    if (!app.token) {
      signedOut();
      return;
    }
    try {
      await signedIn();
    } catch (e) {
      signedOut(String(e.message || e));
    }
  }

  start().catch((e) => setStatus('error', 'The page could not start: ' + (e.message || e)));
}());
