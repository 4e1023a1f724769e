// The canteen screen. It shows what the terminal's server sends over /events and
// never decides anything itself. Every text from the server is written with
// textContent (never innerHTML) after removing control and bidi characters.
"use strict";

const T = {
  zh: {
    title: "食堂终端",
    paid: "支付成功",
    refused: "未能支付",
    noMeal: "当前不是供餐时间",
    visitor: "外单位",
    own: "本单位",
    starting: "正在启动…",
    state: { starting: "启动中", ready: "正常", degraded: "部分故障", stopped: "已停止" },
    online: "在线",
    offline: "离线",
    netUnknown: "网络未知",
    unsynced: "未上传",
    lastSync: "上次同步",
    never: "从未",
    lists: "名单",
    ago: "前",
    version: "配置",
    clockOk: "时钟可信",
    clockBad: "时钟未校准",
    offlineBanner: (d) => `与县服务器断开已 ${d}：消费照常记录，联网后自动上传`,
    lostBanner: "屏幕与终端程序失去连接，正在重新连接…",
    staff: "员工",
    staffOff: "本终端未设置员工密码",
    pinTitle: "请输入员工密码",
    ok: "确认",
    close: "关闭",
    wrongPin: (n) => `密码错误，还可尝试 ${n} 次`,
    locked: (s) => `错误次数过多，请 ${s} 秒后再试`,
    busy: "终端忙，请稍后再试",
    panelTitle: "员工操作",
    lastTitle: "最近一笔消费",
    noCharge: "今天没有可撤销的消费",
    reverse: "撤销这笔消费",
    reverseQ: (a) => `确认撤销 ${a}？`,
    reverseYes: "确认撤销",
    reverseNo: "取消",
    reversed: (n, a) => `已撤销 ${a}（记录 #${n}）`,
    window: (m) => `${m} 分钟内可撤销`,
    aside: (t) => `（${t}）`,  // full-width brackets in Chinese text only
    totalsTitle: "今日统计",
    cols: ["餐次", "笔数", "金额", "撤销", "净额", "拒绝"],
    total: "合计",
    print: "打印日结单",
    csv: "导出 CSV",
    exported: "已导出",
    summaryTitle: "日结单",
    terminal: "终端",
    entries: "记录",
    notUploaded: "未上传记录",
    printed: "打印时间",
    refusals: "拒绝原因",
    qr: "扫码",
    card: "刷卡",
    codes: {
      no_such_sale: "这笔消费不存在或已撤销",
      reversal_too_late: "已超过撤销时限，请联系县信息中心退款",
      nothing_to_reverse: "没有可撤销的消费",
    },
    units: { s: "秒", m: "分钟", h: "小时", d: "天" },
  },
  en: {
    title: "Canteen terminal",
    paid: "Paid",
    refused: "Not paid",
    noMeal: "No meal is being served now",
    visitor: "Visitors",
    own: "Own unit",
    starting: "Starting…",
    state: { starting: "Starting", ready: "Ready", degraded: "Degraded", stopped: "Stopped" },
    online: "Online",
    offline: "Offline",
    netUnknown: "Network unknown",
    unsynced: "Unsynced",
    lastSync: "Last sync",
    never: "never",
    lists: "Lists",
    ago: " ago",
    version: "Settings",
    clockOk: "Clock trusted",
    clockBad: "Clock NOT trusted",
    offlineBanner: (d) => `County server unreachable for ${d}: sales are still recorded and upload when the network is back`,
    lostBanner: "The screen lost the terminal program; reconnecting…",
    staff: "Staff",
    staffOff: "No staff PIN is set on this terminal",
    pinTitle: "Staff PIN",
    ok: "OK",
    close: "Close",
    wrongPin: (n) => `Wrong PIN; ${n} tries left`,
    locked: (s) => `Too many wrong PINs; try again in ${s} s`,
    busy: "The terminal is busy; try again",
    panelTitle: "Staff",
    lastTitle: "Last charge",
    noCharge: "No charge to reverse today",
    reverse: "Reverse this charge",
    reverseQ: (a) => `Reverse ${a}?`,
    reverseYes: "Yes, reverse",
    reverseNo: "Cancel",
    reversed: (n, a) => `Reversed ${a} (entry #${n})`,
    window: (m) => `Reversible within ${m} min`,
    aside: (t) => ` (${t})`,
    totalsTitle: "Today",
    cols: ["Meal", "Sales", "Amount", "Reversed", "Net", "Refused"],
    total: "Total",
    print: "Print day summary",
    csv: "Export CSV",
    exported: "Exported",
    summaryTitle: "Day summary",
    terminal: "Terminal",
    entries: "Entries",
    notUploaded: "Not yet uploaded",
    printed: "Printed",
    refusals: "Refusals by reason",
    qr: "QR",
    card: "card",
    codes: {
      no_such_sale: "That sale does not exist or is already reversed",
      reversal_too_late: "Too late to reverse here; county IT can refund it",
      nothing_to_reverse: "No charge to reverse",
    },
    units: { s: "s", m: "min", h: "h", d: "d" },
  },
};

const $ = (id) => document.getElementById(id);
let cfg = null;           // the hello snapshot's settings
let status = {};          // the last status event
let L = T.zh;             // words in the screen's language
let source = null;        // the EventSource
let connected = false;
let lostSince = Date.now();
let lastMessage = 0;
let verdictTimer = null;
let staffPin = null;      // held only while the staff panel is open
let staffTimer = null;
let lastCharge = null;
let audio = null;

// ---- text ----

// Control (Cc), format/bidi (Cf), surrogates, private use and line/paragraph separators.
const UNSAFE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\u2028\u2029]/gu;
function clean(value) {
  if (value === null || value === undefined) return "";
  return String(value).replace(UNSAFE, "").replace(/\s+/g, " ").trim();
}
function put(el, value) {
  (typeof el === "string" ? $(el) : el).textContent = clean(value);
}
function yuan(fen) {
  if (typeof fen !== "number") return "";
  const sign = fen < 0 ? "-" : "";
  const abs = Math.abs(fen);
  return `${sign}¥${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}
function duration(seconds) {
  const u = L.units;
  const s = Math.max(0, Math.floor(seconds));
  const sep = cfg && cfg.language === "en" ? " " : "";
  if (s < 60) return `${s}${sep}${u.s}`;
  if (s < 3600) return `${Math.floor(s / 60)}${sep}${u.m}`;
  if (s < 86400 * 2) return `${Math.floor(s / 3600)}${sep}${u.h}`;
  return `${Math.floor(s / 86400)}${sep}${u.d}`;
}
function localTime(ms, withSeconds) {
  const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
  if (withSeconds) opts.second = "2-digit";
  try {
    opts.timeZone = cfg ? cfg.timezone : undefined;
    return new Intl.DateTimeFormat(cfg && cfg.language === "en" ? "en-GB" : "zh-CN", opts).format(new Date(ms));
  } catch (e) {
    delete opts.timeZone;
    return new Intl.DateTimeFormat(undefined, opts).format(new Date(ms));
  }
}
function localDate(ms) {
  const en = cfg && cfg.language === "en";
  const opts = { month: en ? "short" : "long", day: "numeric", weekday: "short" };
  try {
    opts.timeZone = cfg ? cfg.timezone : undefined;
    return new Intl.DateTimeFormat(en ? "en-GB" : "zh-CN", opts).format(new Date(ms));
  } catch (e) {
    return "";
  }
}

// ---- the stream ----

function connect() {
  if (source) source.close();
  source = new EventSource("/events");
  source.addEventListener("hello", (e) => onHello(JSON.parse(e.data)));
  source.addEventListener("decision", (e) => { seen(); showDecision(JSON.parse(e.data), 0, true); });
  source.addEventListener("status", (e) => { seen(); status = JSON.parse(e.data); renderStatus(); });
  source.addEventListener("ping", seen);
  source.onerror = () => {
    if (connected) lostSince = Date.now();
    connected = false;
    // EventSource retries by itself unless the server answered with an error; then we do.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    renderBanners();
  };
}
function seen() {
  lastMessage = Date.now();
  connected = true;
}
function onHello(snap) {
  if (cfg && cfg.instance !== snap.instance) {
    // The terminal program restarted, perhaps upgraded: load its page afresh.
    location.reload();
    return;
  }
  seen();
  cfg = snap;
  L = T[snap.language] || T.zh;
  document.documentElement.lang = snap.language === "en" ? "en" : "zh-CN";
  document.body.dataset.language = snap.language;
  chrome();
  status = snap.status || {};
  tick();
  if (snap.decision) {
    showDecision(snap.decision, snap.decision_age_ms || 0, false);
  }
}

// ---- views ----

function chrome() {
  document.title = L.title;
  put("staff-button", L.staff);
  put("pin-title", L.pinTitle);
  put("pin-ok", L.ok);
  put("pin-close", L.close);
  put("panel-close", L.close);
  put("panel-title", L.panelTitle);
  put("last-title", L.lastTitle);
  put("reverse-button", L.reverse);
  put("reverse-yes", L.reverseYes);
  put("reverse-no", L.reverseNo);
  put("totals-title", L.totalsTitle);
  put("print-button", L.print);
  put("csv-button", L.csv);
  const head = document.querySelector("#totals thead tr");
  head.replaceChildren(...L.cols.map((c) => { const th = document.createElement("th"); th.textContent = c; return th; }));
}

function renderIdle() {
  const s = status;
  put("canteen", s.canteen_name || "");
  if (s.state === "starting" || s.state === "stopped" || s.state === "degraded") {
    put("idle-hint", s.sentence || (s.state === "starting" ? L.starting : ""));
  } else {
    put("idle-hint", "");
  }
  document.body.dataset.state = s.state || "starting";
  if (s.meal_label) {
    put("idle-meal", s.meal_label);
    put("idle-price", typeof s.price_fen === "number" ? yuan(s.price_fen) : "");
    put("idle-visitor",
      typeof s.price_visitor_fen === "number" && s.price_visitor_fen !== s.price_fen
        ? `${L.visitor} ${yuan(s.price_visitor_fen)}` : "");
  } else {
    put("idle-meal", s.state === "starting" ? L.starting : L.noMeal);
    put("idle-price", "");
    put("idle-visitor", "");
  }
}

function showDecision(d, ageMs, fresh) {
  const left = (cfg ? cfg.verdict_seconds * 1000 : 4000) - ageMs;
  if (left <= 0) return;
  const ok = d.verdict === "accept";
  const box = $("verdict");
  box.className = ok ? "accept" : "reject";
  put("verdict-mark", ok ? "✓" : "✗");
  put("verdict-title", ok ? L.paid : (d.reason_text || L.refused));
  // The agency's name from the directory (or the settings' unit_names), else its code.
  const who = [d.display_name, d.unit_name || d.unit].map(clean).filter(Boolean).join(" · ");
  put("verdict-who", who);
  // The price tier in words, and for a unit the directory does not list, why it paid
  // the visitor price.
  put("verdict-tier", d.tier_text || "");
  put("verdict-note", d.tier_note || "");
  document.body.dataset.tier = d.tier || "";
  if (ok) {
    put("verdict-what", [d.meal_label, yuan(d.amount_fen)].map(clean).filter(Boolean).join("  "));
    put("verdict-todo", "");
  } else {
    put("verdict-what", "");
    put("verdict-todo", d.reason_todo || "");
  }
  $("idle").hidden = true;
  box.hidden = false;
  document.body.dataset.view = ok ? "accept" : "reject";
  document.body.dataset.seq = d.seq === null || d.seq === undefined ? "" : String(d.seq);
  if (fresh) beep(ok);
  clearTimeout(verdictTimer);
  verdictTimer = setTimeout(showIdle, left);
}

function showIdle() {
  $("verdict").hidden = true;
  $("idle").hidden = false;
  document.body.dataset.view = "idle";
  renderIdle();
}

function renderStatus() {
  const s = status;
  const now = Date.now();
  renderIdle();
  const state = $("st-state");
  put(state, s.state && s.state !== "ready" ? L.state[s.state] || s.state : "");
  state.hidden = !s.state || s.state === "ready";
  const online = $("st-online");
  const since = typeof s.since_ms === "number" ? ` ${duration((now - s.since_ms) / 1000)}` : "";
  if (s.online === true) put(online, `● ${L.online}${since}`);
  else if (s.online === false) put(online, `● ${L.offline}${since}`);
  else put(online, `● ${L.netUnknown}`);
  online.className = "item " + (s.online === true ? "good" : s.online === false ? "bad" : "");
  put("st-unsynced", typeof s.unsynced === "number" ? `${L.unsynced} ${s.unsynced}` : "");
  put("st-sync", `${L.lastSync} ${typeof s.last_sync_ms === "number" ? localTime(s.last_sync_ms, false) : L.never}`);
  put("st-lists", typeof s.list_age_s === "number" ? `${L.lists} ${duration(s.list_age_s)}${L.ago}` : "");
  put("st-version", s.settings_version ? `${L.version} v${s.settings_version}` : "");
  const clock = $("st-clock");
  put(clock, s.clock_trusted === false ? L.clockBad : s.clock_trusted === true ? L.clockOk : "");
  clock.className = "item " + (s.clock_trusted === false ? "bad" : "");
  document.body.dataset.online = s.online === true ? "yes" : s.online === false ? "no" : "unknown";
  renderBanners();
}

function renderBanners() {
  const now = Date.now();
  const s = status;
  const after = cfg ? cfg.offline_banner_after_s * 1000 : 30000;
  const offline = s.online === false && typeof s.since_ms === "number" && now - s.since_ms >= after;
  const banner = $("banner-offline");
  if (offline) put(banner, L.offlineBanner(duration((now - s.since_ms) / 1000)));
  banner.hidden = !offline;
  // A silent stream for three pings means the terminal program is gone, even if TCP is not.
  if (connected && now - lastMessage > 35000) {
    connected = false;
    lostSince = lastMessage;
    connect();
  }
  const lost = !connected && now - lostSince > 3000;
  const lostBox = $("banner-lost");
  put(lostBox, L.lostBanner);
  lostBox.hidden = !lost;
  document.body.dataset.banner = lost ? "lost" : offline ? "offline" : "none";
}

function tick() {
  const now = Date.now();
  put("clock", `${localDate(now)} ${localTime(now, true)}`);
  renderStatus();
}

// ---- sound ----

function beep(ok) {
  if (!cfg || !cfg.sound) return;
  try {
    audio = audio || new AudioContext();
    const t0 = audio.currentTime + 0.01;
    // Accept: two short rising tones. Refuse: two low buzzes.
    const notes = ok ? [[880, 0, 0.09], [1320, 0.11, 0.12]] : [[220, 0, 0.16], [220, 0.22, 0.16]];
    for (const [freq, at, len] of notes) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = ok ? "sine" : "square";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t0 + at);
      gain.gain.exponentialRampToValueAtTime(ok ? 0.5 : 0.25, t0 + at + 0.01);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + at + len);
      osc.connect(gain).connect(audio.destination);
      osc.start(t0 + at);
      osc.stop(t0 + at + len + 0.02);
    }
  } catch (e) {
    // No sound device: the colours still say it.
  }
}

// ---- staff ----

function staffOpen() {
  $("staff").hidden = false;
  $("panel-view").hidden = true;
  $("pin-view").hidden = false;
  $("pin-input").value = "";
  dots();
  if (!cfg || !cfg.staff_enabled) {
    put("pin-message", L.staffOff);
    $("pin-pad").classList.add("disabled");
  } else {
    put("pin-message", "");
    $("pin-pad").classList.remove("disabled");
  }
  touchStaff();
  $("pin-input").focus();
}
function staffClose() {
  staffPin = null;
  lastCharge = null;
  $("pin-input").value = "";
  $("staff").hidden = true;
  $("reverse-confirm").hidden = true;
  put("panel-message", "");
  clearTimeout(staffTimer);
}
function touchStaff() {
  clearTimeout(staffTimer);
  staffTimer = setTimeout(staffClose, (cfg ? cfg.staff_idle_s : 60) * 1000);
}
function dots() {
  put("pin-dots", "●".repeat($("pin-input").value.length) || " ");
}
function pinKey(key) {
  const input = $("pin-input");
  if (key === "back") input.value = input.value.slice(0, -1);
  else if (key === "ok") { submitPin(); return; }
  else if (input.value.length < 12) input.value += key;
  dots();
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  return response;
}
function refusal(data) {
  if (!data) return L.busy;
  if (data.error === "wrong_pin" && data.tries_left === 0) return L.locked(data.retry_after_s);
  if (data.error === "wrong_pin") return L.wrongPin(data.tries_left);
  if (data.error === "locked") return L.locked(data.retry_after_s);
  if (data.error === "staff_off") return L.staffOff;
  return L.codes[data.error] || clean(data.message) || L.busy;
}
async function readJson(response) {
  try { return await response.json(); } catch (e) { return null; }
}

async function submitPin() {
  const pin = $("pin-input").value;
  if (!pin) return;
  let response;
  try {
    response = await post("/staff/open", { pin });
  } catch (e) {
    put("pin-message", L.busy);
    return;
  }
  const data = await readJson(response);
  $("pin-input").value = "";
  dots();
  if (!response.ok) {
    put("pin-message", refusal(data));
    document.body.dataset.staff = data && data.error ? data.error : "error";
    return;
  }
  staffPin = pin;
  document.body.dataset.staff = "open";
  $("pin-view").hidden = true;
  $("panel-view").hidden = false;
  put("panel-message", "");
  renderPanel(data);
}

function renderPanel(data) {
  lastCharge = data.last_charge;
  const box = $("last-charge");
  if (lastCharge) {
    const c = lastCharge;
    const lines = [
      [localTime(c.at_ms, false), L[c.method] || ""],
      [c.display_name, c.unit_name || c.unit],
      [c.tier_text],  // the price tier charged; absent for sales recorded before tiers
      [c.meal_label, yuan(c.amount_fen)],
    ].filter((parts) => parts.some((part) => clean(part)));
    box.replaceChildren(...lines.map((parts) => {
      const div = document.createElement("div");
      div.textContent = parts.map(clean).filter(Boolean).join("  ");
      return div;
    }));
    $("reverse-button").hidden = false;
  } else {
    put(box, L.noCharge);
    $("reverse-button").hidden = true;
  }
  $("reverse-confirm").hidden = true;
  if (data.reversal_minutes) put("last-title", L.lastTitle + L.aside(L.window(data.reversal_minutes)));
  renderTotals(data.totals);
}

function cell(row, text, tag) {
  const el = document.createElement(tag || "td");
  el.textContent = clean(text);
  row.appendChild(el);
}
function renderTotals(t) {
  const body = document.querySelector("#totals tbody");
  body.replaceChildren();
  const sum = { sales: 0, sales_fen: 0, reversals: 0, reversed_fen: 0, net_fen: 0, refusals: 0 };
  for (const m of t.meals) {
    const row = document.createElement("tr");
    cell(row, m.meal_label || m.meal);
    cell(row, m.sales);
    cell(row, yuan(m.sales_fen));
    cell(row, m.reversals ? `${m.reversals} / ${yuan(m.reversed_fen)}` : "0");
    cell(row, yuan(m.net_fen));
    cell(row, m.refusals);
    body.appendChild(row);
    for (const k of Object.keys(sum)) sum[k] += m[k];
  }
  const foot = document.querySelector("#totals tfoot tr");
  foot.replaceChildren();
  cell(foot, `${L.total} ${clean(t.day)}`, "th");
  cell(foot, sum.sales, "th");
  cell(foot, yuan(sum.sales_fen), "th");
  cell(foot, sum.reversals ? `${sum.reversals} / ${yuan(sum.reversed_fen)}` : "0", "th");
  cell(foot, yuan(sum.net_fen), "th");
  cell(foot, sum.refusals, "th");
}

async function staffCall(path, body) {
  touchStaff();
  if (!staffPin) { staffClose(); return null; }
  let response;
  try {
    response = await post(path, { pin: staffPin, ...body });
  } catch (e) {
    put("panel-message", L.busy);
    return null;
  }
  if (response.status === 403 || response.status === 429) {
    // The PIN stopped working (changed, or locked): back to the pad.
    const data = await readJson(response);
    staffOpen();
    put("pin-message", refusal(data));
    return null;
  }
  return response;
}

async function reverseLast() {
  if (!lastCharge) return;
  const response = await staffCall("/staff/reverse", { seq: lastCharge.seq });
  if (!response) return;
  const data = await readJson(response);
  if (!response.ok) {
    put("panel-message", refusal(data));
    $("reverse-confirm").hidden = true;
    document.body.dataset.reversal = data && data.error ? data.error : "error";
    return;
  }
  put("panel-message", L.reversed(data.reversal.seq, yuan(data.reversal.amount_fen)));
  document.body.dataset.reversal = "done";
  renderPanel({ last_charge: data.last_charge, totals: data.totals });
}

async function printSummary() {
  const response = await staffCall("/staff/summary", {});
  if (!response) return;
  const data = await readJson(response);
  if (!response.ok || !data) { put("panel-message", refusal(data)); return; }
  const out = $("print-summary");
  out.replaceChildren();
  const line = (tag, text) => { const el = document.createElement(tag); el.textContent = clean(text); out.appendChild(el); return el; };
  line("h1", `${data.canteen_name || ""} ${L.summaryTitle}`);
  line("p", `${data.totals.day}  ${L.terminal} ${data.terminal_id}`);
  line("p", `${L.entries} #${data.first_seq ?? "-"} – #${data.last_seq ?? "-"}  ${L.notUploaded} ${data.unsynced_entries}`);
  const table = $("totals").cloneNode(true);
  table.removeAttribute("id");
  out.appendChild(table);
  const reasons = Object.entries(data.refusals_by_reason || {});
  if (reasons.length) {
    line("h2", L.refusals);
    for (const [code, n] of reasons) line("p", `${code}: ${n}`);
  }
  line("p", `${L.printed} ${localDate(Date.now())} ${localTime(Date.now(), false)}`);
  window.print();
}

async function exportCsv() {
  const response = await staffCall("/staff/summary.csv", {});
  if (!response) return;
  if (!response.ok) { put("panel-message", refusal(await readJson(response))); return; }
  const blob = await response.blob();
  const header = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(header);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = match ? match[1] : "canteen-summary.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  put("panel-message", L.exported);
}

// ---- start ----

function wire() {
  $("staff-button").addEventListener("click", staffOpen);
  $("pin-pad").addEventListener("click", (e) => {
    const key = e.target && e.target.dataset ? e.target.dataset.key : null;
    if (key && cfg && cfg.staff_enabled) { touchStaff(); pinKey(key); }
  });
  $("pin-input").addEventListener("input", () => {
    $("pin-input").value = $("pin-input").value.replace(/\D/g, "").slice(0, 12);
    dots();
    touchStaff();
  });
  $("pin-input").addEventListener("keydown", (e) => { if (e.key === "Enter") submitPin(); });
  $("pin-close").addEventListener("click", staffClose);
  $("panel-close").addEventListener("click", staffClose);
  $("reverse-button").addEventListener("click", () => {
    touchStaff();
    if (!lastCharge) return;
    put("reverse-question", L.reverseQ(yuan(lastCharge.amount_fen)));
    $("reverse-confirm").hidden = false;
  });
  $("reverse-no").addEventListener("click", () => { touchStaff(); $("reverse-confirm").hidden = true; });
  $("reverse-yes").addEventListener("click", reverseLast);
  $("print-button").addEventListener("click", printSummary);
  $("csv-button").addEventListener("click", exportCsv);
  $("staff").addEventListener("pointerdown", touchStaff);
}

document.addEventListener("DOMContentLoaded", () => {
  document.body.dataset.view = "idle";
  wire();
  chrome();
  tick();
  setInterval(tick, 1000);
  connect();
});
