// A session's live events over the WebSocket: a stream ticket (headers cannot be set on a
// browser WebSocket), replay of ids > fromId, then live. On any drop (a 4001 close, a network
// error, a server restart) it reconnects (4004, the session deleted, ends it) with a fresh ticket from the last id it saw, so no
// event is missed or shown twice.
import { api } from "./api.js";

export function openStream(sessionId, onEvent, onStatus) {
  let lastId = 0;
  let socket = null;
  let closed = false;
  let delay = 250;
  let retry = null;

  async function connect() {
    if (closed) return;
    try {
      const { ticket } = await api("POST", `/v1/sessions/${sessionId}/stream-ticket`);
      if (closed) return;
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      socket = new WebSocket(`${scheme}://${location.host}/v1/sessions/${sessionId}/stream?ticket=${encodeURIComponent(ticket)}&fromId=${lastId}`);
    } catch (failure) {
      if (failure.status === 404 || failure.status === 401) { onStatus("gone"); return; }
      return later();
    }
    socket.onopen = () => { delay = 250; onStatus("live"); };
    socket.onmessage = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      if (typeof event.id !== "number" || event.id <= lastId) return;
      lastId = event.id;
      onEvent(event);
    };
    socket.onclose = (close) => {
      socket = null;
      if (close.code === 4004) { onStatus("gone"); return; } // the session was deleted
      if (!closed) later();
    };
  }

  function later() {
    onStatus("reconnecting");
    retry = setTimeout(connect, delay);
    delay = Math.min(delay * 2, 5000);
  }

  connect();
  return () => {
    closed = true;
    clearTimeout(retry);
    if (socket) socket.close(1000);
  };
}
