import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Synchronization
import Testing

@Suite("Secrets stay secret; sessions and timers survive a restart", .processes)
struct SecretsAndPersistenceTests {
    @Test("secret values never appear in responses, logs or any file of the data directory")
    func secretsAreNotDisclosed() async throws {
        let secret = "s3cr3t-value-\(UUID().uuidString)"
        let repoToken = "ghp_repo-token-\(UUID().uuidString)"
        let headerValue = "Bearer hook-\(UUID().uuidString)"
        let server = try TestServer()
        let origin = try await makeGitRepository(in: server.directory)
        try await server.run { api in
            let created = try await api.request(
                .post, "/v1/sessions",
                json: [
                    "prompt": "use the key", "secrets": ["MODEL_API_KEY": .string(secret)],
                    "repo": ["url": .string("file://" + origin.path), "token": .string(repoToken)],
                    "callback": ["url": "https://example.com/hook", "headers": ["Authorization": .string(headerValue)]],
                ])
            #expect(created.status == 201)
            let id = try #require(created["sessionId"]?.stringValue)
            let responses = [
                created,
                try await api.request(.get, "/v1/sessions/\(id)"),
                try await api.request(.get, "/v1/sessions"),
                try await api.request(.patch, "/v1/sessions/\(id)", json: ["mode": "code"]),
                try await api.request(.post, "/v1/sessions", json: ["prompt": "x", "secrets": ["HOME": .string(secret)]]),
            ]
            for response in responses {
                for value in [secret, repoToken, headerValue] { #expect(!response.text.contains(value)) }
            }
            #expect(created["secretNames"] == ["MODEL_API_KEY"])
            // The sealed value opens back to the plaintext in memory (the runtime will need it).
            let sessionId = try #require(SessionID(rawValue: id))
            let stored = try #require(try await api.plane.store.session(sessionId))
            #expect(stored.spec.secrets["MODEL_API_KEY"] != nil)
        }
        let files = server.directory.allBytes()
        #expect(!files.isEmpty)
        for value in [secret, repoToken, headerValue] {
            #expect(files.range(of: Data(value.utf8)) == nil, "plaintext found in the data directory")
            #expect(!server.logs.text.contains(value), "plaintext found in the logs")
        }
        #expect(server.logs.text.contains("session prepared"))
    }

    @Test("sessions persist across a restart of the control plane")
    func persistence() async throws {
        let directory = try TemporaryDirectory()
        let first = try TestServer(directory: directory)
        let views = Handoff()
        try await first.run { api in
            let id = try await api.createSession(["prompt": "remember me", "envVars": ["A": "1"]])
            views.set(id, try await api.request(.get, "/v1/sessions/\(id)").json)
        }
        let (id, view) = try #require(views.get())
        try await TestServer(directory: directory).run { api in
            let again = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(again.status == 200)
            // Everything but the runtime (whose process the first run's end took away) is as it was.
            func stable(_ view: JSONValue) -> JSONValue {
                .object((view.objectValue ?? [:]).filter { $0.key != "runtime" && $0.key != "activity" })
            }
            #expect(stable(again.json) == stable(view))
        }
    }

    @Test("the session TTL fires after a restart, from the durable wake-up")
    func ttlAfterRestart() async throws {
        let directory = try TemporaryDirectory()
        // The TTL runs once the runtime is stopped: a short idle timeout stops it first.
        let timing = Timing(idleTimeoutMs: 300, heartbeatIntervalMs: 100, staleThresholdMs: 1000, sessionTTLMs: 2500)
        let created = Handoff()
        try await TestServer(directory: directory, timing: timing).run { api in
            let id = try await api.createSession()
            created.set(id, .null)
            try await eventually(within: 10, "the idle stop") {
                try await api.request(.get, "/v1/sessions/\(id)")["runtime"]?["state"] == "stopped"
            }
            // The wake-up is durable (the TTL deadline) before the control plane goes away.
            try await eventually(within: 2, "the TTL wake-up stored") {
                guard let session = try await api.plane.store.session(id), let due = try await api.plane.store.wakeUp(of: id) else { return false }
                return due == session.updatedAt.adding(milliseconds: timing.sessionTTLMs)
            }
        }
        let (id, _) = try #require(created.get())
        let restarted = try TestServer(directory: directory, timing: timing)
        try await restarted.run { api in
            let due = try #require(try await api.plane.store.wakeUp(of: id))
            try await eventually(within: 6, "the TTL to delete the session") {
                try await api.request(.get, "/v1/sessions/\(id)").status == 404
            }
            // Not before its time, and within a second after it.
            let lag = Date().timeIntervalSince(due)
            #expect(lag >= 0 && lag < 1.0, "deleted \(lag) s after its deadline")
        }
        #expect(restarted.logs.text.contains("session expired"))
        #expect(restarted.logs.text.contains("rule=ttl"))
    }
}

/// A value handed out of a server run.
final class Handoff: Sendable {
    private let value = Mutex<(SessionID, JSONValue)?>(nil)
    func set(_ id: SessionID, _ json: JSONValue) { value.withLock { $0 = (id, json) } }
    func get() -> (SessionID, JSONValue)? { value.withLock { $0 } }
}
