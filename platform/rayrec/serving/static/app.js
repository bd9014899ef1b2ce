// The rayrec page: pick a user, see "guess you like", open a movie for similar ones, rate it.
"use strict";

const $ = (id) => document.getElementById(id);
let currentUser = null;
let currentMovie = null;
let lastList = null; // {request_id, ids}: the list on screen, so a click or a rating counts for it

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

// When the server requires a token (RAYREC_API_TOKEN), it answers 401/403: the page then asks for it
// once and keeps it for this tab only (sessionStorage), sending it as a bearer token.
function token() { return sessionStorage.getItem("rayrec-token"); }

async function getJSON(url, options) {
  const opts = { ...(options || {}) };
  opts.headers = { ...(opts.headers || {}) };
  if (token()) opts.headers["Authorization"] = `Bearer ${token()}`;
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) $("token-form").hidden = false;
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function movieLine(m) {
  return [m.year, (m.genres || []).join(", ")].filter(Boolean).join(" · ");
}

function renderItem(item, i, interleaved = false) {
  const li = el("li", "item");
  li.dataset.movieId = item.movie_id;
  li.appendChild(el("span", "rank", String(i + 1)));
  const title = el("span", "title", item.title || `movie ${item.movie_id}`);
  for (const p of item.paths || []) title.appendChild(el("span", "path", p));
  if (item.team) title.appendChild(el("span", "team", item.team));
  // an item both lists offered in the same round: its clicks credit neither
  else if (interleaved) title.appendChild(el("span", "team neutral", "both"));
  li.appendChild(title);
  li.appendChild(el("span", "score", item.score.toFixed(3)));
  li.appendChild(el("span", "genres", movieLine(item)));
  if (item.reason) li.appendChild(el("span", "reason", item.reason));
  li.addEventListener("click", () => showMovie(item.movie_id));
  return li;
}

// The list's request id, when the movie was on it: the event then counts for that list.
function requestIdFor(movieId) {
  return lastList && lastList.ids.includes(movieId) ? lastList.request_id : undefined;
}

function postEvent(event) {
  return getJSON("events", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(event),
  });
}

function experimentNote(rec) {
  if (!rec.experiment) return null;
  if (rec.variant === "interleaved") {
    const teams = [...new Set(rec.items.map((it) => it.team).filter(Boolean))];
    return `experiment ${rec.experiment}: interleaved (${teams.join(" + ") || "both lists alike"})`;
  }
  return `experiment ${rec.experiment}: variant ${rec.variant}`;
}

async function loadRecs() {
  const uid = parseInt($("user-id").value || $("user-select").value, 10);
  const k = parseInt($("k").value || "10", 10);
  if (!Number.isInteger(uid) || uid < 1) { $("status").textContent = "Enter a user id (a positive integer)."; return; }
  currentUser = uid;
  $("who").textContent = `(user ${uid})`;
  $("status").className = "status";
  $("status").textContent = "Loading…";
  try {
    const rec = await getJSON(`recommend?user_id=${uid}&k=${k}`);
    const list = $("recs");
    list.replaceChildren(...rec.items.map((item, i) => {
      const li = renderItem(item, i, rec.variant === "interleaved");
      li.addEventListener("click", () => {
        if (rec.request_id) postEvent({ kind: "click", user_id: uid, movie_id: item.movie_id, request_id: rec.request_id }).catch(() => {});
      });
      return li;
    }));
    lastList = { request_id: rec.request_id, ids: rec.items.map((it) => it.movie_id) };
    const notes = [`${rec.items.length} items in ${rec.took_ms.toFixed(1)} ms`];
    const exp = experimentNote(rec);
    $("variant").replaceChildren();
    if (exp) {
      $("variant").append(exp, " · ");
      const link = el("a", null, "analysis");
      link.href = `report/experiments/${encodeURIComponent(rec.experiment)}`;
      $("variant").append(link);
    }
    $("variant").hidden = !exp;
    if (exp) notes.push(exp);
    if (rec.cold_start) notes.push("new user: cold-start picks");
    if (rec.degraded) notes.push(`degraded (${rec.degraded_reason})`);
    if (rec.model_version) notes.push(`ranker ${rec.model_version}`);
    $("status").textContent = notes.join(" · ");
    if (rec.degraded) $("status").className = "status degraded";
    document.body.dataset.loaded = "recs";
  } catch (e) {
    $("status").className = "status degraded";
    $("status").textContent = `Could not load recommendations: ${e.message}`;
  }
}

async function showMovie(movieId) {
  currentMovie = movieId;
  $("detail-panel").hidden = false;
  $("rate-status").textContent = "";
  try {
    const [movie, sim] = await Promise.all([getJSON(`movies/${movieId}`), getJSON(`similar?movie_id=${movieId}&k=8`)]);
    $("detail-title").textContent = movie.title || `movie ${movieId}`;
    const stats = movie.rating_count ? ` · ${movie.rating_count} ratings, mean ${(movie.rating_mean || 0).toFixed(2)}` : "";
    $("detail-meta").textContent = movieLine(movie) + stats;
    $("similar").replaceChildren(...sim.items.map((s, i) => {
      const li = renderItem({ ...s, paths: [], reason: null }, i);
      return li;
    }));
    document.body.dataset.loaded = "similar";
  } catch (e) {
    $("detail-meta").textContent = `Could not load movie: ${e.message}`;
  }
}

async function rate(rating) {
  if (currentUser === null || currentMovie === null) return;
  try {
    await postEvent({ kind: "rating", user_id: currentUser, movie_id: currentMovie, value: rating,
                      request_id: requestIdFor(currentMovie) });
    $("rate-status").textContent = `Rated ${rating}★, refreshing your list…`;
    await loadRecs();
  } catch (e) {
    $("rate-status").textContent = `Could not rate: ${e.message}`;
  }
}

$("user-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadRecs(); });
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("rayrec-token", $("token").value.trim());
  $("token").value = "";
  $("token-form").hidden = true;
  loadRecs();
});
$("user-select").addEventListener("change", () => { $("user-id").value = ""; loadRecs(); });
for (const b of document.querySelectorAll("#rate button")) b.addEventListener("click", () => rate(parseFloat(b.dataset.rating)));

const params = new URLSearchParams(location.search);
if (params.get("user_id")) $("user-id").value = params.get("user_id");
if (params.get("movie_id")) showMovie(parseInt(params.get("movie_id"), 10));
loadRecs();
