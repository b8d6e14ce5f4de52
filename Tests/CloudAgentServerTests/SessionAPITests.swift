import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

@Suite("Session API through the real HTTP server", .processes)
struct SessionAPITests {
    @Test("every /v1 route needs a valid bearer token; the open routes do not")
    func authentication() async throws {
        try await TestServer().run { api in
            for token in [nil, "wrong", ""] as [String?] {
                let response = try await api.request(.get, "/v1/sessions", token: token)
                #expect(response.status == 401)
                #expect(response.errorCode == "UNAUTHORIZED")
            }
            #expect(try await api.request(.post, "/v1/sessions", token: nil, body: #"{"prompt":"x"}"#).status == 401)
            #expect(try await api.request(.get, "/v1/sessions").status == 200)
            #expect(try await api.request(.get, "/healthz", token: nil).status == 200)
            #expect(try await api.request(.get, "/readyz", token: nil).status == 200)
            let metrics = try await api.request(.get, "/metrics", token: nil)
            #expect(metrics.status == 200 && metrics.text.contains("cloud_agent_sessions_created_total"))
            let openapi = try await api.request(.get, "/openapi.yaml", token: nil)
            #expect(openapi.status == 200 && openapi.text.contains("/v1/sessions/{sessionId}"))
            let missing = try await api.request(.get, "/v1/nothing-here")
            #expect(missing.status == 404 && missing.errorCode == "NOT_FOUND")
        }
    }

    @Test("create, get, list, patch and delete a session")
    func lifecycle() async throws {
        let server = try TestServer()
        let origin = try await makeGitRepository(in: server.directory)
        try await server.run { api in
            let created = try await api.request(
                .post, "/v1/sessions",
                json: [
                    "prompt": "say hello", "mode": "code", "model": "m1", "envVars": ["GREETING": "hi"],
                    "secrets": ["API_KEY": "k"], "setupCommands": ["echo ready"], "autoCommit": true,
                    "repo": ["url": .string(origin.path), "branch": "main"], "callback": ["url": "https://example.com/hook"],
                    "idleTimeoutMs": 120_000,
                ])
            #expect(created.status == 201)
            let id = try #require(created["sessionId"]?.stringValue)
            #expect(id.hasPrefix("agent_"))
            #expect(created["agent"] == "scripted")
            #expect(created["mode"] == "code")
            #expect(created["repo"] == ["url": .string(origin.path), "branch": "main"])
            #expect(created["workBranch"] == "main")
            #expect(created["envVarNames"] == ["GREETING"])
            #expect(created["secretNames"] == ["API_KEY"])
            #expect(created["setupCommands"] == ["echo ready"])
            #expect(created["autoCommit"] == true)
            #expect(created["callback"] == ["url": "https://example.com/hook"])
            #expect(created["idleTimeoutMs"] == 120_000)
            #expect(created["initiatedAt"] == .null)
            #expect(created["runtime"]?["state"] == "starting")
            #expect(created["runtime"]?["stopReason"] == .null)
            #expect(created["executionCount"] == 0)
            #expect(created["latestExecution"] == .null)
            let createdAt = try #require(created["createdAt"]?.stringValue)
            #expect(createdAt.hasSuffix("Z") && createdAt.contains("."))

            let fetched = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(fetched.status == 200)
            #expect(fetched["createdAt"] == created["createdAt"] && fetched["envVarNames"] == created["envVarNames"])

            let patched = try await api.request(
                .patch, "/v1/sessions/\(id)",
                json: [
                    "mode": nil, "envVars": [:], "setupCommands": [], "prompt": "say goodbye", "idleTimeoutMs": nil,
                ])
            #expect(patched.status == 200)
            #expect(patched["mode"] == .null)
            #expect(patched["model"] == "m1")
            #expect(patched["envVarNames"] == [])
            #expect(patched["setupCommands"] == [])
            #expect(patched["secretNames"] == ["API_KEY"])
            #expect(patched["idleTimeoutMs"] == JSONValue(api.plane.configuration.timing.idleTimeoutMs))
            #expect(stableView(try await api.request(.get, "/v1/sessions/\(id)").json) == stableView(patched.json))

            #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
            #expect(try await api.request(.get, "/v1/sessions/\(id)").status == 404)
            #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 404)
            #expect(try await api.request(.get, "/v1/sessions/not-an-id").status == 404)
        }
    }

    @Test("the list is newest first and pages with a cursor")
    func listing() async throws {
        try await TestServer().run { api in
            var ids: [String] = []
            for index in 0..<5 {
                ids.append(try await api.createSession(["prompt": .string("task \(index)")]).rawValue)
                try await Task.sleep(for: .milliseconds(3))
            }
            var seen: [String] = []
            var cursor: String?
            repeat {
                let page = try await api.request(.get, "/v1/sessions?limit=2" + (cursor.map { "&cursor=\($0)" } ?? ""))
                #expect(page.status == 200)
                seen += (page["sessions"]?.arrayValue ?? []).compactMap { $0["sessionId"]?.stringValue }
                cursor = page["nextCursor"]?.stringValue
            } while cursor != nil
            #expect(seen == ids.reversed())
            #expect(try await api.request(.get, "/v1/sessions?limit=0").errorField == "limit")
            #expect(try await api.request(.get, "/v1/sessions?cursor=garbage").errorField == "cursor")
        }
    }

    @Test("another user's session is a 404 and never listed")
    func tenantIsolation() async throws {
        try await TestServer().run { api in
            let bobToken = BearerToken.generate()
            try await api.plane.store.saveToken(hash: BearerToken.hash(bobToken), owner: Owner(user: "bob"), createdAt: Date())
            let bobAtAcme = BearerToken.generate()
            try await api.plane.store.saveToken(hash: BearerToken.hash(bobAtAcme), owner: Owner(user: "bob", org: "acme"), createdAt: Date())

            let mine = try await api.createSession()
            let bobs = try await api.createSession(token: bobToken)
            for token in [bobToken, bobAtAcme] {
                #expect(try await api.request(.get, "/v1/sessions/\(mine)", token: token).status == 404)
                #expect(try await api.request(.patch, "/v1/sessions/\(mine)", token: token, json: ["mode": "x"]).status == 404)
                #expect(try await api.request(.delete, "/v1/sessions/\(mine)", token: token).status == 404)
            }
            #expect(try await api.request(.get, "/v1/sessions/\(bobs)").status == 404)
            let bobList = try await api.request(.get, "/v1/sessions", token: bobToken)
            #expect(bobList["sessions"]?.arrayValue?.compactMap { $0["sessionId"]?.stringValue } == [bobs.rawValue])
            #expect(try await api.request(.get, "/v1/sessions", token: bobAtAcme)["sessions"] == [])
            #expect(try await api.request(.get, "/v1/sessions/\(mine)").status == 200)
        }
    }

    static let invalidBodies: [(body: String, status: Int, field: String)] = [
        (#"{}"#, 400, "prompt"),
        (#"{"prompt": ""}"#, 400, "prompt"),
        (#"{"prompt": 5}"#, 400, "prompt"),
        (#"{"prompt": null}"#, 400, "prompt"),
        ("{\"prompt\": \"\(String(repeating: "a", count: 100_001))\"}", 413, "prompt"),
        (#"{"prompt": "x", "agent": "nope"}"#, 400, "agent"),
        (#"{"prompt": "x", "colour": "blue"}"#, 400, "colour"),
        (#"{"prompt": "x", "envVars": {"1BAD": "v"}}"#, 400, "envVars.1BAD"),
        (#"{"prompt": "x", "envVars": {"A-B": "v"}}"#, 400, "envVars.A-B"),
        (#"{"prompt": "x", "envVars": {"HOME": "v"}}"#, 400, "envVars.HOME"),
        (#"{"prompt": "x", "envVars": {"PATH": "v"}}"#, 400, "envVars.PATH"),
        (#"{"prompt": "x", "envVars": {"SESSION_ID": "v"}}"#, 400, "envVars.SESSION_ID"),
        (#"{"prompt": "x", "secrets": {"SESSION_HOME": "v"}}"#, 400, "secrets.SESSION_HOME"),
        ("{\"prompt\": \"x\", \"envVars\": {\"A\": \"\(String(repeating: "v", count: 4097))\"}}", 400, "envVars.A"),
        ("{\"prompt\": \"x\", \"envVars\": {\"\(String(repeating: "N", count: 129))\": \"v\"}}", 400, "envVars.\(String(repeating: "N", count: 129))"),
        ("{\"prompt\": \"x\", \"envVars\": {\(((0..<51).map { "\"V\($0)\": \"v\"" }).joined(separator: ","))}}", 400, "envVars"),
        ("{\"prompt\": \"x\", \"secrets\": {\(((0..<51).map { "\"S\($0)\": \"v\"" }).joined(separator: ","))}}", 400, "secrets"),
        (#"{"prompt": "x", "envVars": {"A": "1"}, "secrets": {"A": "2"}}"#, 400, "secrets.A"),
        ("{\"prompt\": \"x\", \"setupCommands\": [\(Array(repeating: "\"true\"", count: 21).joined(separator: ","))]}", 400, "setupCommands"),
        ("{\"prompt\": \"x\", \"setupCommands\": [\"\(String(repeating: "e", count: 501))\"]}", 400, "setupCommands[0]"),
        (#"{"prompt": "x", "repo": {"url": "https://h/r.git; rm -rf /"}}"#, 400, "repo.url"),
        (#"{"prompt": "x", "repo": {"url": "$(touch /tmp/x)"}}"#, 400, "repo.url"),
        (#"{"prompt": "x", "repo": {"url": "https://user:pw@h/r.git"}}"#, 400, "repo.url"),
        (#"{"prompt": "x", "repo": {"url": "https://h/r.git", "branch": "a b"}}"#, 400, "repo.branch"),
        (#"{"prompt": "x", "repo": {"url": "https://h/r.git", "branch": "-x"}}"#, 400, "repo.branch"),
        (#"{"prompt": "x", "repo": {"url": "https://h/r.git", "branch": "a;b"}}"#, 400, "repo.branch"),
        ("{\"prompt\": \"x\", \"repo\": {\"url\": \"https://h/r.git\", \"branch\": \"\(String(repeating: "b", count: 256))\"}}", 400, "repo.branch"),
        (#"{"prompt": "x", "repo": {"branch": "main"}}"#, 400, "repo.url"),
        (#"{"prompt": "x", "callback": {"url": "ftp://h/x"}}"#, 400, "callback.url"),
        (#"{"prompt": "x", "autoCommit": "yes"}"#, 400, "autoCommit"),
        (#"{"prompt": "x", "idleTimeoutMs": 0}"#, 400, "idleTimeoutMs"),
        (#"{"prompt": "x", "idleTimeoutMs": 1.5}"#, 400, "idleTimeoutMs"),
        (#"{"prompt": "x", "idleTimeoutMs": "10"}"#, 400, "idleTimeoutMs"),
        (#"[1, 2]"#, 400, "body"),
        (#"{"prompt": "x""#, 400, "body"),
        (#""#, 400, "body"),
    ]

    @Test("bad input is a 4xx naming the field, and nothing is created")
    func validation() async throws {
        try await TestServer().run { api in
            for (body, status, field) in Self.invalidBodies {
                let response = try await api.request(.post, "/v1/sessions", body: body)
                #expect(response.status == status, "\(body.prefix(80)) → \(response.text.prefix(200))")
                #expect(response.errorField == field, "\(body.prefix(80)) → \(response.text.prefix(200))")
                #expect(response.errorCode == (status == 413 ? "PAYLOAD_TOO_LARGE" : "INVALID_REQUEST"))
            }
            #expect(try await api.request(.get, "/v1/sessions")["sessions"] == [])
            // The exact limits are accepted.
            let atLimits = try await api.request(
                .post, "/v1/sessions",
                json: [
                    "prompt": .string(String(repeating: "p", count: 100_000)),
                    "envVars": .object(Dictionary(uniqueKeysWithValues: (0..<50).map { ("V\($0)", JSONValue.string(String(repeating: "v", count: 4096))) })),
                    "setupCommands": .array(Array(repeating: .string("true #" + String(repeating: "e", count: 494)), count: 20)),
                ])
            #expect(atLimits.status == 201, "\(atLimits.text.prefix(200))")
            // A bad PATCH changes nothing.
            let id = try await api.createSession(["prompt": "keep me", "mode": "code"])
            let before = try await api.request(.get, "/v1/sessions/\(id)")
            for (body, status, field) in Self.invalidBodies where field != "prompt" && !body.contains("null") {
                let response = try await api.request(.patch, "/v1/sessions/\(id)", body: body.replacingOccurrences(of: #""prompt": "x", "#, with: ""))
                #expect(response.status == status, "\(body.prefix(80)) → \(response.text.prefix(200))")
                #expect(response.errorField == field)
            }
            #expect(try await api.request(.patch, "/v1/sessions/\(id)", json: ["prompt": nil]).errorField == "prompt")
            #expect(stableView(try await api.request(.get, "/v1/sessions/\(id)").json) == stableView(before.json))
        }
    }

    @Test("a request body over the cap is a 413 and the server stays up")
    func oversizedBody() async throws {
        try await TestServer().run { api in
            let huge = "{\"prompt\": \"\(String(repeating: "x", count: 3 * 1024 * 1024))\"}"
            let response = try await api.request(.post, "/v1/sessions", body: huge)
            #expect(response.status == 413)
            #expect(response.errorCode == "PAYLOAD_TOO_LARGE")
            #expect(try await api.request(.get, "/healthz", token: nil).status == 200)
        }
    }

    @Test("after initiate only idleTimeoutMs and budget may change")
    func patchAfterInitiate() async throws {
        try await TestServer().run { api in
            let id = try await api.createSession()
            var session = try #require(try await api.plane.store.session(id))
            session.initiatedAt = Date().truncatedToMilliseconds
            try await api.plane.store.commit(SessionChange(sessionId: id, session: session))

            let refused = try await api.request(.patch, "/v1/sessions/\(id)", json: ["mode": "ask", "idleTimeoutMs": 5000])
            #expect(refused.status == 409)
            #expect(refused.errorCode == "INVALID_STATE")
            let accepted = try await api.request(.patch, "/v1/sessions/\(id)", json: ["idleTimeoutMs": 5000])
            #expect(accepted.status == 200)
            #expect(accepted["idleTimeoutMs"] == 5000)
            #expect(accepted["mode"] == .null)
            let budget = try await api.request(.patch, "/v1/sessions/\(id)", json: ["budget": ["maxTokens": 1000]])
            #expect(budget.status == 200 && budget["budget"]?["maxTokens"] == 1000, "\(budget.text)")
            #expect(try await api.request(.patch, "/v1/sessions/\(id)", json: ["budget": ["maxTokens": 1000], "model": "m"]).status == 409)
        }
    }
}
