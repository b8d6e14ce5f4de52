import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing
#if canImport(Glibc)
    import Glibc
#endif

extension ReliabilityHarness {
    /// Part 4 of the reliability harness: hostile inputs through the real server. Each must be a
    /// clear refusal that changes nothing and crashes nothing (`/healthz` is checked after each).
    @Suite("Reliability: hostile inputs", .processes)
    struct ReliabilityHostileInputTests {
        static let part = "hostile-inputs"
        static let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1500, stopGraceMs: 1000)

        /// A test server whose runtimes are launched through a wrapper that keeps a copy of each
        /// runtime's secret (written to its stdin by the control plane) in `secrets/<sessionId>`,
        /// so that a test can present one session's secret for another.
        static func serverCapturingSecrets() throws -> (TestServer, URL) {
            var server = try TestServer(timing: timing)
            // Sandbox none: the wrapper hands each runtime's secret to the test through a host
            // directory, which a sandbox (rightly) does not let a runtime write to. The tests
            // built on it play the runtime themselves, on the control plane's side of the wall.
            server.sandbox = .none
            let secrets = server.directory.url.appendingPathComponent("secrets")
            try FileManager.default.createDirectory(at: secrets, withIntermediateDirectories: true)
            let wrapper = server.directory.url.appendingPathComponent("capturing-runtime.sh")
            try """
            #!/bin/sh
            IFS= read -r secret
            printf '%s\\n' "$secret" > "\(secrets.path)/$SESSION_ID"
            exec "\(server.runtimeExecutable.path)" <<EOF
            $secret
            EOF

            """.write(to: wrapper, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: wrapper.path)
            server.runtimeExecutable = wrapper
            return (server, secrets)
        }

        static func secret(of id: SessionID, in secrets: URL) throws -> String {
            let text = try String(contentsOf: secrets.appendingPathComponent(id.rawValue), encoding: .utf8)
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        // MARK: Bodies

        @Test("oversized bodies are 413, deeply nested JSON and invalid UTF-8 are 400, odd values are refused: nothing is created, nothing crashes")
        func hostileBodies() async throws {
            let server = try TestServer(timing: Self.timing)
            defer { Reliability.killProcesses(under: server.directory.url) }
            try await server.run { api in
                let tally = Tally()
                let prepared = try await api.createSession(["prompt": "say untouched"])
                let before = try await api.request(.get, "/v1/sessions/\(prepared)")
                let routes: [(HTTPRequest.Method, String)] = [
                    (.post, "/v1/sessions"), (.patch, "/v1/sessions/\(prepared)"), (.post, "/v1/sessions/\(prepared)/messages"),
                ]
                func expect(_ status: Int, code: String, for body: [UInt8], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
                    for (method, path) in routes {
                        let response = try await api.raw(method, path, body: body)
                        // A follow-up before initiate is 409 once the body is read; a body refused
                        // while it is read is refused first.
                        #expect(
                            response.status == status, "\(what) → \(method) \(path): \(response.status) \(response.text.prefix(200))",
                            sourceLocation: sourceLocation)
                        #expect(response.errorCode == code, "\(what) → \(method) \(path): \(response.text.prefix(200))", sourceLocation: sourceLocation)
                        #expect(await api.isHealthy(), "the server is down after \(what)", sourceLocation: sourceLocation)
                        tally.add("inputs")
                    }
                }

                // Oversized: just over the 2 MiB body limit, far over it, and a prompt over 100,000 characters.
                let limit = Limits.requestBodyBytes
                for size in [limit + 1, 3 * limit, 16 * limit] {
                    try await expect(
                        413, code: "PAYLOAD_TOO_LARGE", for: Array(#"{"prompt":""#.utf8) + [UInt8](repeating: 0x61, count: size) + Array(#""}"#.utf8),
                        "a \(size)-byte body")
                }
                try await expect(
                    413, code: "PAYLOAD_TOO_LARGE", for: Array(#"{"prompt":"\#(String(repeating: "é", count: 100_001))"}"#.utf8), "a 100,001-character prompt")
                // A chunked body without a length, streamed past the limit.
                for (method, path) in routes {
                    let port = try #require(api.client.port)
                    let status = try await Reliability.offThePool { try Self.chunkedUpload(port: port, method: method.rawValue, path: path, bytes: 3 * limit) }
                    #expect(status == 413, "chunked upload → \(method) \(path): \(status)")
                    #expect(await api.isHealthy())
                    tally.add("inputs")
                }

                // Deeply nested JSON: refused, not a stack overflow.
                for depth in [1_000, 100_000] {
                    try await expect(400, code: "INVALID_REQUEST", for: Array(String(repeating: "[", count: depth).utf8), "\(depth) × [")
                    try await expect(
                        400, code: "INVALID_REQUEST",
                        for: Array((#"{"prompt":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}").utf8),
                        "a prompt nested \(depth) deep")
                    try await expect(
                        400, code: "INVALID_REQUEST",
                        for: Array((String(repeating: #"{"a":"#, count: depth) + "1" + String(repeating: "}", count: depth)).utf8), "\(depth) nested objects")
                }

                // Invalid UTF-8: a stray byte, an overlong encoding, an encoded surrogate, a truncated sequence.
                for bad: [UInt8] in [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFE, 0xFF]] {
                    try await expect(400, code: "INVALID_REQUEST", for: Array(#"{"prompt":"ok "#.utf8) + bad + Array(#""}"#.utf8), "invalid UTF-8 \(bad)")
                    try await expect(400, code: "INVALID_REQUEST", for: bad + Array(#"{"prompt":"ok"}"#.utf8), "invalid UTF-8 \(bad) before the JSON")
                }

                // Odd but well-formed values: refused with 400 (never a 5xx).
                let odd: [(String, String)] = [
                    (#"{"prompt":"x","idleTimeoutMs":1e400}"#, "body"), (#"{"prompt":"x","idleTimeoutMs":9223372036854775808}"#, "idleTimeoutMs"),
                    (#"{"prompt":"x","idleTimeoutMs":-1}"#, "idleTimeoutMs"), (#"{"prompt":"x","idleTimeoutMs":0.5}"#, "idleTimeoutMs"),
                    (#"{"prompt":"x","envVars":{"A":"x\u0000y"}}"#, "envVars.A"), (#"{"prompt":"x","secrets":{"A":"x\u0000y"}}"#, "secrets.A"),
                    (#"{"prompt":"x","envVars":{"A\u0000B":"x"}}"#, "envVars.A\u{0}B"),
                    (#"{"prompt":"x","setupCommands":["true\u0000rm"]}"#, "setupCommands[0]"),
                    (#"{"prompt":"x","repo":{"url":"/tmp\u0000/x"}}"#, "repo.url"), (#"{"prompt":"x","mode":"a\u0000"}"#, "mode"),
                    (#"{"prompt":"\ud800"}"#, "body"), (#"{"prompt":"x","callback":{"url":"http://127.0.0.1:9/\u0000"}}"#, "callback.url"),
                    (#"{"prompt":"x","callback":{"url":"http://127.0.0.1:9/x\r\nX-Injected: 1"}}"#, "callback.url"),
                    ("[]", "body"), ("null", "body"), (#""prompt""#, "body"), ("{}", "prompt"), (#"{"prompt":"x","unknown":1}"#, "unknown"),
                ]
                var oddAnswers: [String] = []
                for (body, field) in odd {
                    let response = try await api.raw(.post, "/v1/sessions", body: Array(body.utf8))
                    #expect(response.status < 500, "\(body) → \(response.status) \(response.text)")
                    #expect(await api.isHealthy())
                    tally.add("inputs")
                    if response.status == 201 {
                        oddAnswers.append("\(field) accepted")
                        let created = response.json["sessionId"]?.stringValue ?? ""
                        _ = try await api.request(.delete, "/v1/sessions/\(created)")
                    } else {
                        #expect(response.status == 400 && response.errorField == field, "\(body) → \(response.status) \(response.text)")
                    }
                }

                // Nothing was created or changed.
                let sessions = try await api.request(.get, "/v1/sessions")["sessions"]?.arrayValue ?? []
                #expect(sessions.map { $0["sessionId"] } == [.string(prepared.rawValue)], "sessions were created: \(sessions.count)")
                #expect(stableView(try await api.request(.get, "/v1/sessions/\(prepared)").json) == stableView(before.json))
                #expect(try await api.request(.get, "/v1/sessions/\(prepared)/executions")["executions"]?.arrayValue?.isEmpty == true)
                Reliability.report(
                    Self.part,
                    "bodies: \(tally["inputs"]) hostile requests, all refused, server up after each\(oddAnswers.isEmpty ? "" : "; accepted: \(oddAnswers)")")
            }
        }

        /// Streams a chunked body of `bytes` bytes (in 64 KiB chunks) and returns the answer's status.
        static func chunkedUpload(port: Int, method: String, path: String, bytes: Int) throws -> Int {
            let socket = try RawHTTPConnection(port: port)
            socket.send(
                Array(
                    "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(TestServer.localToken)\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .utf8))
            let chunk = [UInt8](repeating: 0x20, count: 65536)
            var sent = 0
            while sent < bytes, socket.send(Array("10000\r\n".utf8) + chunk + Array("\r\n".utf8)) { sent += chunk.count }
            if sent >= bytes { socket.send(Array("0\r\n\r\n".utf8)) }
            return socket.readStatus()
        }

        // MARK: WebSocket frames

        @Test(
            "oversized, fragmented-past-the-limit and garbage frames on the runtime and stream routes close that connection; the server, the session's runtime and its subscribers carry on"
        )
        func hostileFrames() async throws {
            let (server, secrets) = try Self.serverCapturingSecrets()
            defer { Reliability.killProcesses(under: server.directory.url) }
            var random = SeededRandom(seed: Reliability.seed("\(Self.part)/frames"))
            let garbage: [[UInt8]] = (0..<100).map { index in
                let frame = Array(#"{"type":"event","event":{"seq":1,"executionId":"exc_1","kind":"agent","at":0,"data":{"kind":"text","text":"x"}}}"#.utf8)
                switch index % 3 {
                case 0: return (0..<Int.random(in: 1...300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                case 1: return Array(frame.prefix(Int.random(in: 0..<frame.count, using: &random)))
                default:
                    var mutated = frame
                    for _ in 0..<Int.random(in: 1...6, using: &random) {
                        mutated[Int.random(in: 0..<mutated.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                    }
                    return mutated
                }
            }
            try await server.run { api in
                let tally = Tally()
                let port = try #require(api.client.port)
                let id = try await api.createSession(["prompt": "say before\ntick 3 0.02"])
                try await api.waitForRuntime(id, state: "running")
                let secret = try Self.secret(of: id, in: secrets)
                let runtimeHeaders = ["X-Cloud-Agent-Session": id.rawValue, "X-Cloud-Agent-Runtime-Secret": secret]
                let streamHeaders = ["Authorization": "Bearer \(TestServer.localToken)"]

                func attack(
                    _ path: String, _ headers: [String: String], _ what: String, mustClose: Bool = true, sourceLocation: SourceLocation = #_sourceLocation,
                    _ send: @escaping @Sendable (HostileWebSocket) -> Void
                ) async throws {
                    let socket = try await HostileWebSocket.open(port: port, path: path, headers: headers)
                    #expect(socket.status == 101, "\(what): \(socket.responseHead)", sourceLocation: sourceLocation)
                    try await Reliability.offThePool { send(socket) }
                    if mustClose {
                        let ending = await socket.readUntilClosedInBackground()
                        #expect(ending.closed, "\(what): the connection stayed open", sourceLocation: sourceLocation)
                        if let code = ending.closeCode { tally.add("close \(code)") } else if ending.closed { tally.add("dropped") }
                    }
                    #expect(await api.isHealthy(), "the server is down after \(what)", sourceLocation: sourceLocation)
                    tally.add(path.hasSuffix("/stream") ? "stream" : "runtime")
                }
                let big = [UInt8](repeating: 0x61, count: 2 << 20)
                for (path, headers) in [(RuntimeProtocolPath.path, runtimeHeaders), ("/v1/sessions/\(id)/stream", streamHeaders)] {
                    try await attack(path, headers, "a 2 MiB frame on \(path)") { $0.sendFrame(opcode: 0x1, payload: big) }
                    try await attack(path, headers, "a 1.25 MiB message in 16 KiB fragments on \(path)") { socket in
                        let piece = [UInt8](repeating: 0x61, count: 16 << 10)
                        guard socket.sendFrame(opcode: 0x1, payload: piece, fin: false) else { return }
                        for _ in 0..<79 {
                            guard socket.sendFrame(opcode: 0x0, payload: piece, fin: false) else { return }
                        }
                        socket.sendFrame(opcode: 0x0, payload: piece)
                    }
                    try await attack(path, headers, "a frame with a 2^62-byte length on \(path)") { socket in
                        socket.send([0x81, 0xFF, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
                    }
                    // The stream ignores what clients send; an unmasked `{}` there need not end it.
                    try await attack(path, headers, "an unmasked frame on \(path)", mustClose: path == RuntimeProtocolPath.path) {
                        $0.send([0x81, 0x02, 0x7B, 0x7D])
                    }
                    try await attack(path, headers, "a reserved opcode on \(path)") { $0.sendFrame(opcode: 0x3, payload: [1, 2, 3]) }
                }
                // The runtime route's decoder, through the real server: random bytes, truncated and
                // mutated frames (never a valid hello, so the real runtime keeps its registration).
                for frame in garbage {
                    try await attack(RuntimeProtocolPath.path, runtimeHeaders, "a garbage frame") { $0.sendFrame(opcode: 0x1, payload: frame) }
                }
                try await attack(RuntimeProtocolPath.path, runtimeHeaders, "a binary frame") { $0.sendFrame(opcode: 0x2, payload: [0x7B, 0x7D]) }

                // The session's own runtime never noticed: it runs an execution to the end.
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                try await api.waitForExecution(id, status: "completed")
                let events = try await api.events(id)
                #expect(events.map(\.id) == Array(1...Int64(events.count)))
                #expect(events.filter { $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue } == ["before", "tick 1/3", "tick 2/3", "tick 3/3"])
                #expect(events.filter { $0.type == "runtime.started" }.count == 1, "the runtime had to start again")
                // And a well-behaved subscriber still streams.
                let subscriber = StreamSubscriber()
                try await subscriber.run(
                    url: "ws://127.0.0.1:\(port)/v1/sessions/\(id)/stream", headers: [.authorization: "Bearer \(TestServer.localToken)"],
                    stopAfter: events.count)
                #expect(subscriber.ids == events.map(\.id))
                Reliability.report(
                    Self.part,
                    "frames: \(tally["runtime"]) hostile runtime-route connections (\(garbage.count) garbage frames, seeded), \(tally["stream"]) hostile stream connections; server up after each, runtime undisturbed; endings: \(tally.summary)"
                )
            }
        }

        // MARK: Paths

        @Test(
            "path traversal: the scripted agent's write never leaves the workspace, and hostile repo urls, paths and branches are refused with nothing created")
        func pathTraversal() async throws {
            let server = try TestServer(timing: Self.timing)
            defer { Reliability.killProcesses(under: server.directory.url) }
            let origin = try await makeGitRepository(in: server.directory)
            let outside = server.directory.url.appendingPathComponent("outside")
            try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
            let marker = server.directory.url.appendingPathComponent("pwned")
            let data = server.directory.url.appendingPathComponent("data")
            try await server.run { api in
                // The scripted agent's write.
                let escapes = [
                    "../escape-1.txt", "../../escape-2.txt", "\(outside.path)/escape-3.txt", "sub/../../escape-4.txt",
                    "link/escape-5.txt", "link/../escape-6.txt", "./../escape-7.txt", "//\(outside.path)/escape-8.txt",
                ]
                let prompt = (["run ln -s \(outside.path) link"] + escapes.map { "write \($0) pwned" } + ["write inside/ok.txt fine"]).joined(separator: "\n")
                let id = try await api.createSession(["prompt": .string(prompt), "repo": ["url": .string(origin.path)]])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                try await api.waitForExecution(id, status: "completed")
                let events = try await api.events(id)
                let errors = events.filter { $0.type == "agent" && $0.data["kind"] == "error" }.compactMap { $0.data["message"]?.stringValue }
                #expect(errors.count == escapes.count, "\(errors)")
                #expect(errors.allSatisfy { $0.contains("escapes the workspace") }, "\(errors)")
                #expect(try FileManager.default.contentsOfDirectory(atPath: outside.path).isEmpty, "written outside the workspace")
                let everything = FileManager.default.enumerator(atPath: server.directory.url.path)?.allObjects.compactMap { $0 as? String } ?? []
                #expect(!everything.contains { $0.contains("escape-") }, "\(everything.filter { $0.contains("escape-") })")
                #expect(FileManager.default.fileExists(atPath: data.appendingPathComponent("workspaces/\(id)/inside/ok.txt").path))

                // Hostile repo urls and branches: refused (400, or 422 when git itself refuses), nothing created.
                let workspaces = data.appendingPathComponent("workspaces")
                let workspacesBefore = Set(try FileManager.default.contentsOfDirectory(atPath: workspaces.path))
                let homesBefore = Set((try? FileManager.default.contentsOfDirectory(atPath: data.appendingPathComponent("homes").path)) ?? [])
                let repos: [JSONValue] = [
                    ["url": "../x"], ["url": "../../../../etc"], ["url": "./origin"], ["url": "file:///etc"], ["url": "/etc"],
                    ["url": .string(origin.path + "/../../../../etc")], ["url": .string("file://\(origin.path)/../../../../etc")],
                    ["url": .string("https://127.0.0.1:9/x;touch \(marker.path)")], ["url": .string("https://127.0.0.1:9/x;touch${IFS}\(marker.path)")],
                    ["url": .string("$(touch${IFS}\(marker.path))")], ["url": .string("`touch${IFS}\(marker.path)`")],
                    ["url": .string("--upload-pack=touch${IFS}\(marker.path)")], ["url": "-u"], ["url": "ext::sh"],
                    ["url": .string("ext::touch% \(marker.path)")], ["url": "fd::3"], ["url": "https://user:pw@127.0.0.1:9/x"],
                    ["url": .string("file://\(origin.path)|touch")], ["url": .string(origin.path + "\n")], ["url": ""],
                    ["url": .string(origin.path), "branch": "../../etc"], ["url": .string(origin.path), "branch": "main;touch"],
                    ["url": .string(origin.path), "branch": "--orphan"], ["url": .string(origin.path), "branch": "refs/../x"],
                    ["url": .string(origin.path), "branch": "no-such-branch"], ["url": .string(origin.path), "branch": "main.lock"],
                    ["url": .string(origin.path), "branch": "/main"], ["url": .string(origin.path), "branch": "a//b"],
                ]
                var answers: [Int: Int] = [:]
                for repo in repos {
                    let response = try await api.request(.post, "/v1/sessions", json: ["prompt": "say x", "repo": repo])
                    #expect(response.status == 400 || response.status == 422, "repo \(repo) → \(response.status) \(response.text)")
                    answers[response.status, default: 0] += 1
                    #expect(await api.isHealthy())
                }
                // The same through PATCH of a prepared session: refused, the session unchanged.
                let prepared = try await api.createSession(["prompt": "say x", "repo": ["url": .string(origin.path)]])
                let before = try await api.request(.get, "/v1/sessions/\(prepared)")
                for repo in repos.prefix(12) {
                    let response = try await api.request(.patch, "/v1/sessions/\(prepared)", json: ["repo": repo])
                    #expect(response.status == 400 || response.status == 422, "PATCH repo \(repo) → \(response.status) \(response.text)")
                    answers[response.status, default: 0] += 1
                }
                #expect(stableView(try await api.request(.get, "/v1/sessions/\(prepared)").json) == stableView(before.json))
                let sessions = try await api.request(.get, "/v1/sessions")["sessions"]?.arrayValue ?? []
                #expect(sessions.count == 2, "sessions were created by refused requests: \(sessions.count)")
                let workspacesAfter = Set(try FileManager.default.contentsOfDirectory(atPath: workspaces.path)).subtracting([prepared.rawValue])
                #expect(workspacesAfter == workspacesBefore, "workspaces left behind: \(workspacesAfter.subtracting(workspacesBefore))")
                let homesAfter = Set((try? FileManager.default.contentsOfDirectory(atPath: data.appendingPathComponent("homes").path)) ?? []).subtracting([
                    prepared.rawValue
                ])
                #expect(homesAfter == homesBefore, "homes left behind: \(homesAfter.subtracting(homesBefore))")
                #expect(!FileManager.default.fileExists(atPath: marker.path), "a hostile url ran a command")
                Reliability.report(
                    Self.part,
                    "paths: \(escapes.count) escaping writes refused (error events, nothing outside); \(repos.count + 12) hostile repo requests refused \(answers.sorted { $0.key < $1.key }.map { "\($0.value)×\($0.key)" }.joined(separator: ", ")), nothing created"
                )
            }
        }

        @Test("a repo path into another session's workspace or the data directory is refused")
        func repoPathIntoTheDataDirectory() async throws {
            let server = try TestServer(timing: Self.timing)
            defer { Reliability.killProcesses(under: server.directory.url) }
            let origin = try await makeGitRepository(in: server.directory)
            let data = server.directory.url.appendingPathComponent("data")
            try await server.run { api in
                let victim = try await api.createSession([
                    "prompt": "write secret.txt s3cr3t\nrun git add -A && git -c user.name=a -c user.email=a@b commit -qm s",
                    "repo": ["url": .string(origin.path)],
                ])
                #expect(try await api.request(.post, "/v1/sessions/\(victim)/initiate").status == 202)
                try await api.waitForExecution(id: victim)
                let bob = BearerToken.generate()
                try await api.plane.store.saveToken(hash: BearerToken.hash(bob), owner: Owner(user: "bob"), createdAt: Date())
                let workspace = data.appendingPathComponent("workspaces/\(victim)")
                for url in [workspace.path, "file://\(workspace.path)", data.path, "\(data.path)/workspaces/../workspaces/\(victim)"] {
                    let response = try await api.request(
                        .post, "/v1/sessions", token: bob, json: ["prompt": "run cat secret.txt", "repo": ["url": .string(url)]])
                    #expect(response.status == 400 || response.status == 422, "bob cloned \(url): \(response.status) \(response.text)")
                    if let id = response["sessionId"]?.stringValue { _ = try await api.request(.delete, "/v1/sessions/\(id)", token: bob) }
                }
            }
        }

        // MARK: Credentials of another session

        /// A refused WebSocket handshake is a bare `400` (hummingbird-websocket answers every
        /// refused upgrade so, dropping the route's own answer); the same request without the
        /// handshake gets the route's answer, which names the reason (`reason`, e.g. 401).
        static func expectRefused(
            port: Int, path: String, headers: [String: String], reason: Int, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
        ) async throws {
            let socket = try await HostileWebSocket.open(port: port, path: path, headers: headers)
            #expect(socket.status == 400, "\(what): upgrade answered \(socket.responseHead)", sourceLocation: sourceLocation)
            let request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers.map { "\($0.key): \($0.value)\r\n" }.joined() + "\r\n"
            let status = try await Reliability.offThePool {
                let plain = try RawHTTPConnection(port: port)
                plain.send(Array(request.utf8))
                return plain.readStatus()
            }
            #expect(status == reason, "\(what): without the handshake", sourceLocation: sourceLocation)
        }

        @Test("a runtime secret of another session on the runtime route and a stream ticket of another session are refused; both sessions are unaffected")
        func credentialsOfAnotherSession() async throws {
            let (server, secrets) = try Self.serverCapturingSecrets()
            defer { Reliability.killProcesses(under: server.directory.url) }
            try await server.run { api in
                let port = try #require(api.client.port)
                let a = try await api.createSession(["prompt": "say from a"])
                let b = try await api.createSession(["prompt": "say from b"])
                try await api.waitForRuntime(a, state: "running")
                try await api.waitForRuntime(b, state: "running")
                let secretA = try Self.secret(of: a, in: secrets)
                let secretB = try Self.secret(of: b, in: secrets)
                let eventsBefore = [try await api.events(a).count, try await api.events(b).count]
                var tried = 0

                let runtimeAttempts: [(String, [String: String])] = [
                    ("A's secret for B", ["X-Cloud-Agent-Session": b.rawValue, "X-Cloud-Agent-Runtime-Secret": secretA]),
                    ("B's secret for A", ["X-Cloud-Agent-Session": a.rawValue, "X-Cloud-Agent-Runtime-Secret": secretB]),
                    ("no secret", ["X-Cloud-Agent-Session": a.rawValue]),
                    ("an empty secret", ["X-Cloud-Agent-Session": a.rawValue, "X-Cloud-Agent-Runtime-Secret": ""]),
                    ("A's secret, truncated", ["X-Cloud-Agent-Session": a.rawValue, "X-Cloud-Agent-Runtime-Secret": String(secretA.dropLast())]),
                    ("A's secret with no session", ["X-Cloud-Agent-Runtime-Secret": secretA]),
                    ("A's secret for a malformed session", ["X-Cloud-Agent-Session": "../\(a.rawValue)", "X-Cloud-Agent-Runtime-Secret": secretA]),
                    ("the API token as a runtime secret", ["X-Cloud-Agent-Session": a.rawValue, "X-Cloud-Agent-Runtime-Secret": TestServer.localToken]),
                    ("the API token as a bearer", ["Authorization": "Bearer \(TestServer.localToken)"]),
                ]
                for (what, headers) in runtimeAttempts {
                    try await Self.expectRefused(port: port, path: RuntimeProtocolPath.path, headers: headers, reason: 401, what)
                    #expect(await api.isHealthy())
                    tried += 1
                }

                let ticketA = try #require(try await api.request(.post, "/v1/sessions/\(a)/stream-ticket")["ticket"]?.stringValue)
                let ticketB = try #require(try await api.request(.post, "/v1/sessions/\(b)/stream-ticket")["ticket"]?.stringValue)
                var tampered = Array(ticketA)
                tampered[tampered.count / 2] = tampered[tampered.count / 2] == "A" ? "B" : "A"
                let bob = BearerToken.generate()
                try await api.plane.store.saveToken(hash: BearerToken.hash(bob), owner: Owner(user: "bob"), createdAt: Date())
                let streamAttempts: [(String, String, [String: String], Int)] = [
                    ("A's ticket on B's stream", "/v1/sessions/\(b)/stream?ticket=\(ticketA)", [:], 401),
                    ("B's ticket on A's stream", "/v1/sessions/\(a)/stream?ticket=\(ticketB)", [:], 401),
                    ("a tampered ticket", "/v1/sessions/\(a)/stream?ticket=\(String(tampered))", [:], 401),
                    ("A's runtime secret as a ticket", "/v1/sessions/\(a)/stream?ticket=\(secretA)", [:], 401),
                    ("A's runtime secret as a bearer", "/v1/sessions/\(a)/stream", ["Authorization": "Bearer \(secretA)"], 401),
                    ("another user's token", "/v1/sessions/\(a)/stream", ["Authorization": "Bearer \(bob)"], 404),
                    ("another user's token and A's ticket", "/v1/sessions/\(a)/stream?ticket=\(ticketA)", ["Authorization": "Bearer \(bob)"], 404),
                ]
                for (what, path, headers, status) in streamAttempts {
                    try await Self.expectRefused(port: port, path: path, headers: headers, reason: status, what)
                    #expect(await api.isHealthy())
                    tried += 1
                }
                // The rightful ticket still works, once the wrong ones were tried.
                let rightful = try await HostileWebSocket.open(port: port, path: "/v1/sessions/\(a)/stream?ticket=\(ticketA)", headers: [:])
                #expect(rightful.status == 101)

                // Neither session noticed: no event, and each runtime runs its execution.
                let eventsAfter = [try await api.events(a).count, try await api.events(b).count]
                #expect(eventsAfter == eventsBefore)
                for id in [a, b] {
                    #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                    try await api.waitForExecution(id, status: "completed")
                    let events = try await api.events(id)
                    #expect(events.map(\.id) == Array(1...Int64(events.count)))
                    #expect(events.filter { $0.type == "runtime.started" }.count == 1)
                }
                #expect(try await api.events(a).contains { $0.data["text"] == "from a" })
                #expect(try await api.events(b).contains { $0.data["text"] == "from b" })
                Reliability.report(
                    Self.part,
                    "credentials: \(tried) connections with another session's (or no, or a forged) runtime secret or ticket, all refused; both sessions unaffected"
                )
            }
        }
    }
}

/// The runtime route's path.
enum RuntimeProtocolPath {
    static let path = "/v1/runtime/connect"
}

/// A plain HTTP/1.1 connection for requests the test client cannot make (a streamed chunked body).
final class RawHTTPConnection: @unchecked Sendable {
    private let fd: Int32

    init(port: Int) throws {
        fd = try loopbackSocket(port: port)
    }

    deinit { close(fd) }

    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool { sendAll(bytes, to: fd) }

    /// The status of the answer's first line (0 when there was none).
    func readStatus() -> Int {
        var head: [UInt8] = []
        var byte: UInt8 = 0
        while !head.suffix(2).elementsEqual([13, 10]), recv(fd, &byte, 1, 0) == 1 { head.append(byte) }
        return String(decoding: head, as: UTF8.self).split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    }
}

extension TestAPI {
    /// A request with raw body bytes (the test client's String API cannot carry invalid UTF-8).
    func raw(_ method: HTTPRequest.Method, _ path: String, body: [UInt8]) async throws -> APIResponse {
        let headers: HTTPFields = [.authorization: "Bearer \(TestServer.localToken)", .contentType: "application/json"]
        let response = try await client.execute(uri: path, method: method, headers: headers, body: ByteBuffer(bytes: body))
        let text = String(buffer: response.body)
        let json = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null
        return APIResponse(status: Int(response.status.code), json: json, text: text)
    }

    /// Waits until the session's latest execution has ended, whatever its status.
    func waitForExecution(id: SessionID, within seconds: Double = 15) async throws {
        try await eventually(within: seconds, "the execution of \(id) to end") {
            let status = try await request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"]?.stringValue
            return ["completed", "failed", "interrupted"].contains(status ?? "")
        }
    }
}
