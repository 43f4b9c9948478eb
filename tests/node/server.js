// An Express 4 app with express-session and connect-session-knex, the way a
// Node team would write it, for the Python interop tests.
//
// Configured by environment variables:
//   WDS_DB_CLIENT      knex client: "pg" or "sqlite3"
//   WDS_DB_CONNECTION  PostgreSQL URL, or the SQLite file name
//   WDS_TABLE          the sessions table (connect-session-knex's tableName)
//   WDS_SECRETS        JSON array of secrets: the first signs, each verifies
//   WDS_MAX_AGE_MS     cookie maxAge in milliseconds, or "null" for a browser-session cookie
//   WDS_COOKIE         optional JSON object merged into the cookie options
// Listens on 127.0.0.1 on a free port and prints "listening on N" once the table is ready.
"use strict";

const express = require("express");
const session = require("express-session");
const knexConstructor = require("knex");
const { ConnectSessionKnexStore } = require("connect-session-knex");

const env = process.env;
const client = env.WDS_DB_CLIENT;
const knex = knexConstructor({
  client,
  connection: client === "sqlite3" ? { filename: env.WDS_DB_CONNECTION } : env.WDS_DB_CONNECTION,
  useNullAsDefault: true,
  pool: { min: 0, max: 2 },
});
const store = new ConnectSessionKnexStore({ knex, tableName: env.WDS_TABLE, cleanupInterval: 0 });

const app = express();
app.use(
  session({
    secret: JSON.parse(env.WDS_SECRETS),
    store,
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: JSON.parse(env.WDS_MAX_AGE_MS), ...JSON.parse(env.WDS_COOKIE || "{}") },
  }),
);

// What a response shows of the session: the app's keys, and the cookie object apart.
function describe(req) {
  const data = {};
  for (const key of Object.keys(req.session)) {
    if (key !== "cookie") data[key] = req.session[key];
  }
  return { data, cookie: req.session.cookie.toJSON() };
}

app.get("/read", (req, res) => res.json(describe(req)));

app.get("/incr", (req, res) => {
  req.session.count = (req.session.count || 0) + 1;
  res.json(describe(req));
});

app.get("/set", (req, res) => {
  req.session[req.query.key] = JSON.parse(req.query.value);
  res.json(describe(req));
});

app.get("/login", (req, res, next) => {
  req.session.regenerate((err) => {
    if (err) return next(err);
    req.session.user = req.query.user || "alice";
    return res.json(describe(req));
  });
});

app.get("/logout", (req, res, next) => {
  req.session.destroy((err) => {
    if (err) return next(err);
    res.clearCookie("connect.sid", { path: "/" });
    return res.json({ data: null });
  });
});

// Runs connect-session-knex's own prune of expired rows once.
app.get("/cleanup", async (req, res, next) => {
  try {
    await store.dbCleanup();
    res.json({ ok: true });
  } catch (err) {
    next(err);
  }
});

store.ready.then(
  () => {
    const server = app.listen(0, "127.0.0.1", () => {
      console.log(`listening on ${server.address().port}`);
    });
    const stop = () => server.close(() => knex.destroy().then(() => process.exit(0)));
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  },
  (err) => {
    process.stderr.write(`connect-session-knex could not prepare its table: ${err.stack}\n`);
    process.exit(1);
  },
);
