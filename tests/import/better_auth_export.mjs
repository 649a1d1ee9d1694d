// Keys made by Better Auth's own API-key plugin (npm `better-auth`,
// `@better-auth/api-key`) in its SQLite database (`better-sqlite3`), then
// exported the way a team moving to Keyplane would: one import record per
// row of its `apikey` table. Better Auth stores the SHA-256 of the key in
// base64url without padding, and its clear `start`.
//
// usage: node better_auth_export.mjs EXPORT.jsonl
// (from a directory where those packages are installed: NODE_PATH or cwd)
// Prints a JSON object: {"tokens": {source_id: key}, "disabled": [source_id]}.

import { writeFileSync } from "node:fs";

import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { apiKey } from "@better-auth/api-key";

const database = new Database(":memory:");
const auth = betterAuth({
  database,
  baseURL: "http://127.0.0.1:3000",
  secret: "a-test-secret-that-is-long-enough-0123456789",
  emailAndPassword: { enabled: true },
  plugins: [apiKey()],
  telemetry: { enabled: false },
});
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

const { user } = await auth.api.signUpEmail({
  body: { email: "dev@example.com", password: "a-long-password-1", name: "Dev" },
});
const tokens = {};
for (const name of ["checkout", "reports", "old integration"]) {
  const created = await auth.api.createApiKey({ body: { name, userId: user.id, prefix: "ba_" } });
  tokens[created.id] = created.key;
}
const disabled = Object.keys(tokens)[2];
await auth.api.updateApiKey({ body: { keyId: disabled, userId: user.id, enabled: false } });

const rows = database.prepare("SELECT * FROM apikey").all();
const lines = rows.map((row) =>
  JSON.stringify({
    source_id: row.id,
    hash: row.key,
    hash_format: "sha256_base64url",
    lookup: row.start ?? "",
    name: row.name ?? "",
    scopes: ["orders:read"],
    created_at: new Date(row.createdAt).toISOString(),
    revoked: !row.enabled,
  }),
);
writeFileSync(process.argv[2], lines.join("\n") + "\n");
console.log(JSON.stringify({ tokens, disabled: [disabled] }));
