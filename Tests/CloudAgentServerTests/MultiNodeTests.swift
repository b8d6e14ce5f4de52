import CloudAgentCore
import CloudAgentPostgres
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Logging
import Synchronization
import Testing
import WSClient
#if canImport(Glibc)
    import Glibc
#endif

/// Several `cloud-agent serve` processes on one real PostgreSQL database (a throwaway cluster
/// the tests start): any node answers for any session, every timer fires once, every event
/// reaches every subscriber once, and a node killed -9 loses nothing.
@Suite(.serialized, .long)
struct MultiNodeTests {
    static let token = "multi-node-token"
    static let idleTimeoutMs: Int64 = 2000

    /// A cluster of nodes on one fresh database, in one temp directory.
    final class Cluster: @unchecked Sendable {
        let directory: URL
        let database: PostgresConfiguration
        let databaseURL: String
        let secretKey = SecretBox.generateBase64Key()
        private(set) var nodes: [String: (command: SpawnedCommand, port: Int)] = [:]

        init() async throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("multi-node-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            database = try await PostgresTestCluster.shared.createDatabase()
            databaseURL = "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)?sslmode=disable"
        }

        /// Starts (or restarts, on its old port and data dir) node `name`.
        @discardableResult
        func start(_ name: String, extra: [String: String] = [:]) async throws -> Int {
            let port = try nodes[name]?.port ?? freeLoopbackPort()
            var environment = [
                "CLOUD_AGENT_PORT": String(port), "CLOUD_AGENT_DATA_DIR": directory.appendingPathComponent(name).path,
                "CLOUD_AGENT_DATABASE_URL": databaseURL, "CLOUD_AGENT_API_TOKEN": MultiNodeTests.token, "CLOUD_AGENT_SECRET_KEY": secretKey,
                "CLOUD_AGENT_HEARTBEAT_INTERVAL": "200ms", "CLOUD_AGENT_STALE_THRESHOLD": "3s",
                "CLOUD_AGENT_IDLE_TIMEOUT": "\(MultiNodeTests.idleTimeoutMs)ms", "CLOUD_AGENT_PENDING_TIMEOUT": "30s",
                "CLOUD_AGENT_STOP_GRACE": "1s", "CLOUD_AGENT_NODE_HEARTBEAT": "200ms", "CLOUD_AGENT_NODE_LEASE": "1s",
                "CLOUD_AGENT_LOG_LEVEL": "info",
            ]
            environment.merge(extra) { _, new in new }
            let command = try SpawnedCommand(["serve"], environment: environment, in: directory)
            nodes[name] = (command, port)
            let running = try await RunningServer.awaitBanner(command)
            try #require(running.port == port)
            return port
        }

        /// Stops node `name` with `signal` (SIGTERM: a deploy) and starts it again on its port and data.
        func restart(_ name: String, with signal: Int32 = SIGTERM) async throws {
            let node = try #require(nodes[name])
            node.command.signal(signal)
            try #require(try await node.command.waitForExit(within: 20), "node \(name) did not stop:\n\(node.command.diagnostics)")
            if signal == SIGTERM { #expect(node.command.exitStatus == 0, "node \(name) stopped uncleanly:\n\(node.command.diagnostics)") }
            try await start(name)
        }

        /// The runtime log of a session hosted by node `name`.
        func runtimeLog(_ name: String, session id: String) -> String {
            (try? String(contentsOf: directory.appendingPathComponent("\(name)/runtimes/\(id).log"), encoding: .utf8)) ?? ""
        }

        func kill(_ name: String) async throws {
            let node = try #require(nodes[name])
            node.command.signal(SIGKILL)
            try #require(try await node.command.waitForExit(within: 10))
        }

        func client(_ name: String) throws -> HTTPClient {
            let port = try #require(nodes[name]?.port)
            return HTTPClient(baseURL: URL(string: "http://127.0.0.1:\(port)")!)
        }

        func port(_ name: String) throws -> Int { try #require(nodes[name]?.port) }

        /// A node's id, as it keeps it in its data directory.
        func nodeId(_ name: String) throws -> String {
            try String(contentsOf: directory.appendingPathComponent("\(name)/node-id"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// Runs `body` with the shared database's store open (to read what the API does not show).
        func withStore<T: Sendable>(_ body: @Sendable (PostgresSessionStore) async throws -> T) async throws -> T {
            let store = try PostgresSessionStore(configuration: database, logger: Logger(label: "multi-node-test", factory: { _ in SwiftLogNoOpLogHandler() }))
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask {
                    await store.run()
                    return nil
                }
                defer { group.cancelAll() }
                return try await body(store)
            }
        }

        /// Runtimes (and agents) still running: processes in the directory other than the nodes.
        var runtimesLeft: [Int32] {
            let servers = Set(nodes.values.filter { $0.command.isRunning }.map { $0.command.pid })
            return Reliability.processes(under: directory).filter { !servers.contains($0) }
        }

        /// Stops every node and every runtime, keeping the logs of a failure.
        func tearDown() {
            for node in nodes.values { node.command.forceStop() }
            _ = Reliability.killProcesses(under: directory)
            Reliability.keepLogs(of: "multi-node", from: directory)
        }

        var diagnostics: String {
            nodes.sorted { $0.key < $1.key }.map { "--- node \($0.key)\n\($0.value.command.stderr.suffix(6000))" }.joined(separator: "\n")
        }
    }

    /// Every text frame of a session's stream on one node, from the first event.
    final class StreamRecorder: Sendable {
        private let frames = Mutex<[JSONValue]>([])
        private let task: Mutex<Task<Void, Never>?> = Mutex(nil)

        init(port: Int, session: String) {
            let started = Task { [self] in
                var configuration = WebSocketClientConfiguration()
                configuration.additionalHeaders = [.authorization: "Bearer \(MultiNodeTests.token)"]
                _ = try? await WebSocketClient.connect(
                    url: "ws://127.0.0.1:\(port)/v1/sessions/\(session)/stream?fromId=0", configuration: configuration,
                    logger: Logger(label: "multi-node-stream")
                ) { inbound, _, _ in
                    for try await message in inbound.messages(maxSize: 1 << 20) {
                        guard case .text(let text) = message, let event = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else { continue }
                        self.frames.withLock { $0.append(event) }
                    }
                }
            }
            task.withLock { $0 = started }
        }

        var events: [JSONValue] { frames.withLock { $0 } }
        var ids: [Int64] { events.compactMap { $0["id"]?.intValue } }
        func count(_ type: String) -> Int { events.filter { $0["type"]?.stringValue == type }.count }
        func stop() { task.withLock { $0?.cancel() } }
    }

    /// Nodes a and b, and a session created on node a (so its runtime runs on a's host).
    static func sessionOnNodeA(_ cluster: Cluster, _ body: JSONValue) async throws -> (a: HTTPClient, b: HTTPClient, id: String) {
        try await cluster.start("a")
        try await cluster.start("b")
        let a = try cluster.client("a")
        let created = try await a.request("POST", "/v1/sessions", token: token, json: body)
        try #require(created.status == 201, "create: \(created.text)")
        return (a, try cluster.client("b"), try #require(created["sessionId"]?.stringValue))
    }

    static func view(_ client: HTTPClient, _ id: String) async throws -> JSONValue {
        let response = try await client.request("GET", "/v1/sessions/\(id)", token: token)
        try #require(response.status == 200, "GET \(id): \(response.text)")
        return response.json
    }

    static func events(_ client: HTTPClient, _ id: String) async throws -> [JSONValue] {
        let response = try await client.request("GET", "/v1/sessions/\(id)/events?limit=1000", token: token)
        try #require(response.status == 200, "events: \(response.text)")
        return response["events"]?.arrayValue ?? []
    }

    /// The idle stop was decided within 1 s of its deadline: idle for the timeout, not much more.
    static func expectTimelyIdleStop(_ view: JSONValue, sourceLocation: SourceLocation = #_sourceLocation) {
        let reason = view["runtime"]?["stopReason"]
        #expect(reason?["rule"] == "idle", "stop reason: \(reason ?? .null)", sourceLocation: sourceLocation)
        let idle = reason?["idleMs"]?.intValue ?? -1
        let timeout = reason?["idleTimeoutMs"]?.intValue ?? -1
        #expect(idle >= timeout && idle - timeout <= 1000, "idle \(idle) ms against a timeout of \(timeout) ms", sourceLocation: sourceLocation)
    }

    @Test(
        "a node killed -9 mid-execution: the runtime moves to another node, the execution completes, every event is streamed once, the idle stop lands on time and is recorded once"
    )
    func killedNodeLosesNothing() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        // Created on node a (its runtime runs on a's host), driven and streamed from node b.
        let (a, b, id) = try await Self.sessionOnNodeA(cluster, ["prompt": "tick 30 0.1", "secrets": ["OPENED": "sealed-on-a"]])
        let stream = StreamRecorder(port: try cluster.port("b"), session: id)
        defer { stream.stop() }
        try await eventually(within: 30, "the runtime to start on node a") { try await Self.view(b, id)["runtime"]?["state"] == "running" }
        let initiated = try await b.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token)
        try #require(initiated.status == 202, "initiate on b: \(initiated.text)")

        // Mid-execution, node a dies.
        try await eventually(within: 30, "a few ticks streamed from node b") { stream.count("agent") >= 5 }
        let killedAt = Date()
        try await cluster.kill("a")
        // The runtime says hello to node b (the record names the node it connected to).
        let b_id = try cluster.nodeId("b")
        let sessionId = try #require(SessionID(rawValue: id))
        let reconnectedAt: Date? = try await cluster.withStore { store in
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                if let runtime = try await store.session(sessionId)?.runtime, runtime.connectedNode == b_id, let at = runtime.connectedAt { return at }
                try await Task.sleep(for: .milliseconds(20))
            }
            return nil
        }
        let reconnectMs = try #require(reconnectedAt, "the runtime never said hello to node b").milliseconds(since: killedAt)
        #expect(reconnectMs < 3000, "the runtime reconnected \(reconnectMs) ms after its node's kill -9")

        try await eventually(within: 60, "the execution to complete through node b") {
            try await Self.view(b, id)["latestExecution"]?["status"] == "completed"
        }
        try await eventually(within: 30, "the idle stop") { try await Self.view(b, id)["runtime"]?["state"] == "stopped" }
        let stopped = try await Self.view(b, id)
        Self.expectTimelyIdleStop(stopped)
        Reliability.report(
            "multi-node",
            "kill -9 of the runtime's node: reconnected to another in \(reconnectMs) ms; idle stop decided \((stopped["runtime"]?["stopReason"]?["idleMs"]?.intValue ?? 0) - Self.idleTimeoutMs) ms past its deadline"
        )

        // Every event reached the subscriber on node b once, in order, without a gap.
        let stored = try await Self.events(b, id)
        try await eventually(within: 10, "the stream to catch up") { stream.ids.last == stored.last?["id"]?.intValue }
        let ids = stream.ids
        #expect(ids == Array(1...Int64(ids.count)), "stream ids: \(ids)\n\(cluster.diagnostics)")
        #expect(stream.count("agent") == 30, "ticks streamed: \(stream.count("agent"))")
        #expect(stream.count(EventType.runtimeStopped) == 1)
        #expect(stored.filter { $0["type"]?.stringValue == EventType.runtimeStopped }.count == 1)

        // Node a stays dead: a follow-up cold-starts the session on node b (its host is lost),
        // and the secret sealed on node a opens there.
        let followUp = try await b.request(
            "POST", "/v1/sessions/\(id)/messages", token: Self.token,
            json: [
                "prompt": "run test \"$OPENED\" = sealed-on-a && echo secret-opened"
            ])
        try #require(followUp.status == 202, "follow-up on b: \(followUp.text)")
        try await eventually(within: 60, "the follow-up to complete on node b") {
            let view = try await Self.view(b, id)
            return view["latestExecution"]?["executionId"] == followUp["executionId"] && view["latestExecution"]?["status"] == "completed"
        }
        let afterFollowUp = try await Self.events(b, id)
        #expect(afterFollowUp.contains { $0["type"] == "agent" && "\($0)".contains("secret-opened") }, "\(afterFollowUp.suffix(6))")
        try await eventually(within: 30, "the second idle stop") { try await Self.view(b, id)["runtime"]?["state"] == "stopped" }
        Self.expectTimelyIdleStop(try await Self.view(b, id))

        // Node a comes back: nothing is stopped or recorded again.
        try await cluster.start("a")
        let final = try await Self.events(a, id)
        #expect(final.filter { $0["type"]?.stringValue == EventType.runtimeStopped }.count == 2, "\(cluster.diagnostics)")
        #expect(try await Self.view(a, id)["runtime"]?["state"] == "stopped")
        try await eventually(within: 10, "no runtime left") { cluster.runtimesLeft.isEmpty }
    }

    @Test(
        "a node killed -9 while its runtime's agent waits for permission: the runtime moves to another node, the request is answered there, the command runs and the run completes"
    )
    func failoverWhileWaitingForInput() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        let (_, b, id) = try await Self.sessionOnNodeA(cluster, ["prompt": "approve touch approved.txt\nsay done", "approvals": "ask"])
        try await eventually(within: 30, "the runtime to start on node a") { try await Self.view(b, id)["runtime"]?["state"] == "running" }
        let initiated = try await b.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token)
        try #require(initiated.status == 202, "initiate on b: \(initiated.text)")
        let request = try await eventuallyValue(within: 30, "the agent's permission request") {
            try await b.request("GET", "/v1/sessions/\(id)/input-requests", token: Self.token)["requests"]?.arrayValue?.first { $0["status"] == "pending" }
        }

        // The node the runtime is connected to dies while the agent waits.
        try await cluster.kill("a")
        let b_id = try cluster.nodeId("b")
        let sessionId = try #require(SessionID(rawValue: id))
        try await eventually(within: 30, "the runtime to say hello to node b") {
            try await cluster.withStore { store in try await store.session(sessionId)?.runtime.connectedNode == b_id }
        }
        #expect(try await Self.view(b, id)["latestExecution"]?["waitingForInput"] == request["requestId"], "still waiting after the failover")
        let answered = try await b.request(
            "POST", "/v1/sessions/\(id)/input-requests/\(request["requestId"]?.stringValue ?? "")", token: Self.token, json: ["decision": "allow"])
        #expect(answered.status == 200, "\(answered.text)")
        try await eventually(within: 60, "the run to complete through node b") { try await Self.view(b, id)["latestExecution"]?["status"] == "completed" }
        let events = try await Self.events(b, id)
        let tools = events.filter { $0["type"] == "agent" && $0["data"]?["kind"] == "tool" }
        #expect(tools.contains { $0["data"]?["input"] == "touch approved.txt" }, "\(events.suffix(8))")
        #expect(events.filter { $0["type"] == "input.resolved" }.compactMap { $0["data"]?["decision"]?.stringValue } == ["allow"])
    }

    @Test("the node the runtime is connected to is killed -9 with follow-ups queued: none is lost, and they run in order through the other node")
    func failoverWithAQueue() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        let (_, b, id) = try await Self.sessionOnNodeA(cluster, ["prompt": "say first\nsleep 2"])
        try await eventually(within: 30, "the runtime to start on node a") { try await Self.view(b, id)["runtime"]?["state"] == "running" }
        try #require(try await b.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token).status == 202)
        for prompt in ["say second", "say third"] {
            let queued = try await b.request("POST", "/v1/sessions/\(id)/messages", token: Self.token, json: ["prompt": .string(prompt), "queue": true])
            try #require(queued.status == 202 && queued["status"] == "queued", "\(queued.text)")
        }
        try await cluster.kill("a")
        try await eventually(within: 60, "the queue to run through node b") {
            let view = try await Self.view(b, id)
            return view["queuedCount"] == 0 && view["activeExecutionId"] == .null && view["latestExecution"]?["status"] == "completed"
        }
        let texts = try await Self.events(b, id).filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
        #expect(texts == ["first", "second", "third"])
        let executions = try await b.request("GET", "/v1/sessions/\(id)/executions", token: Self.token)["executions"]?.arrayValue ?? []
        #expect(executions.compactMap { $0["status"]?.stringValue } == ["completed", "completed", "completed"])
    }

    @Test(
        "a node joins after the runtime connected, then the runtime's node is killed -9: the runtime was told of the new node, says hello to it, and the execution completes"
    )
    func runtimeLearnsOfANodeThatJoinsLater() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        // Only node a exists when the runtime is launched and welcomed: it knows no other node.
        try await cluster.start("a")
        let a = try cluster.client("a")
        let created = try await a.request("POST", "/v1/sessions", token: Self.token, json: ["prompt": "tick 80 0.1\nsay finished"])
        try #require(created.status == 201, "create: \(created.text)")
        let id = try #require(created["sessionId"]?.stringValue)
        #expect(created["sandbox"]?.stringValue == (await bwrapWorks() ? "bwrap" : "none"))
        try #require(try await a.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token).status == 202)
        try await eventually(within: 30, "a few ticks") { try await Self.events(a, id).filter { $0["type"] == "agent" }.count >= 3 }

        // Node b joins; node a tells its runtimes the new list of live nodes.
        let bPort = try await cluster.start("b")
        try await eventually(within: 15, "the runtime to hear of node b") {
            cluster.runtimeLog("a", session: id).contains("the control plane named its nodes")
                && cluster.runtimeLog("a", session: id).contains("127.0.0.1:\(bPort)")
        }

        try await cluster.kill("a")
        let b = try cluster.client("b")
        let bId = try cluster.nodeId("b")
        let sessionId = try #require(SessionID(rawValue: id))
        let helloToB: Bool = try await cluster.withStore { store in
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                if try await store.session(sessionId)?.runtime.connectedNode == bId { return true }
                try await Task.sleep(for: .milliseconds(20))
            }
            return false
        }
        #expect(helloToB, "the runtime never said hello to node b:\n\(cluster.runtimeLog("a", session: id).suffix(3000))")
        try await eventually(within: 60, "the execution to complete through node b") {
            try await Self.view(b, id)["latestExecution"]?["status"] == "completed"
        }
        let texts = try await Self.events(b, id).filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
        #expect(texts == (1...80).map { "tick \($0)/80" } + ["finished"], "agent events not exactly once: \(texts.count)")
        #expect(try await b.request("DELETE", "/v1/sessions/\(id)", token: Self.token).status == 204)
    }

    @Test(
        "a rolling deploy: two nodes restarted one after the other with SIGTERM while 10 sandboxed agents work: every execution completes with every event once, and every runtime is stopped once"
    )
    func rollingDeploy() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        try await cluster.start("a")
        try await cluster.start("b")
        let ticks = 100
        var ids: [String] = []
        for index in 0..<10 {
            let client = try cluster.client(index % 2 == 0 ? "a" : "b")
            let created = try await client.request(
                "POST", "/v1/sessions", token: Self.token,
                json: [
                    "prompt": .string("tick \(ticks) 0.1\nsay finished"), "idleTimeoutMs": 60_000,
                ])
            try #require(created.status == 201, "create: \(created.text)")
            let id = try #require(created["sessionId"]?.stringValue)
            #expect(created["sandbox"]?.stringValue == (await bwrapWorks() ? "bwrap" : "none"))
            try #require(try await client.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token).status == 202)
            ids.append(id)
        }
        let sessions = ids
        let a = try cluster.client("a")
        try await eventually(within: 60, "every agent at work") {
            for id in sessions where try await Self.events(a, id).filter({ $0["type"] == "agent" }).count < 2 { return false }
            return true
        }
        // The deploy: node a, then node b, each stopped gracefully and started again.
        let deployStarted = ContinuousClock.now
        try await cluster.restart("a")
        let aRestarted = ContinuousClock.now - deployStarted
        try await cluster.restart("b")
        let deploy = ContinuousClock.now - deployStarted
        let b = try cluster.client("b")
        try await eventually(within: 90, "every execution to end") {
            for id in sessions {
                let status = try await Self.view(b, id)["latestExecution"]?["status"]?.stringValue
                if status == "running" || status == "pending" { return false }
            }
            return true
        }
        // Then each runtime idles out, once: the idle timeout is given back to the server's 2 s.
        for id in sessions {
            let patched = try await a.request("PATCH", "/v1/sessions/\(id)", token: Self.token, json: ["idleTimeoutMs": .number(Double(Self.idleTimeoutMs))])
            #expect(patched.status == 200, "\(patched.text)")
        }
        try await eventually(within: 60, "every runtime to be idle-stopped") {
            for id in sessions where try await Self.view(a, id)["runtime"]?["state"] != "stopped" { return false }
            return true
        }
        for id in sessions {
            let view = try await Self.view(a, id)
            #expect(view["latestExecution"]?["status"] == "completed", "session \(id): \(view)\n\(cluster.diagnostics.suffix(4000))")
            #expect(view["runtime"]?["stopReason"]?["rule"] == "idle")
            let events = try await Self.events(b, id)
            let eventIds = events.compactMap { $0["id"]?.intValue }
            #expect(eventIds == Array(1...Int64(eventIds.count)), "ids of \(id): \(eventIds)")
            let texts = events.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
            #expect(texts == (1...ticks).map { "tick \($0)/\(ticks)" } + ["finished"], "agent events of \(id) not exactly once: \(texts.count)")
            #expect(events.filter { $0["type"]?.stringValue == EventType.runtimeStopped }.count == 1, "stops of \(id)")
            #expect(events.filter { $0["type"]?.stringValue == EventType.runtimeStarted }.count == 1, "starts of \(id)")
        }
        Reliability.report(
            "multi-node",
            "rolling deploy of 2 nodes (SIGTERM, start; node a took \(aRestarted), both \(deploy)) with 10 sandboxed agents ticking: 10/10 executions completed, \(ticks) ticks each exactly once, ids without gaps, one runtime.started and one idle stop per session"
        )
        try await eventually(within: 10, "no runtime left") { cluster.runtimesLeft.isEmpty }
    }

    @Test("three nodes: sessions created on one and driven from another are each idle-stopped once, on time, and each completion is called back once")
    func threeNodesStopEachOnce() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        let names = ["a", "b", "c"]
        for name in names { try await cluster.start(name) }
        let receiver = CallbackReceiver()
        try await receiver.serve { url in
            var ids: [String] = []
            for index in 0..<15 {
                let creator = try cluster.client(names[index % 3])
                let driver = try cluster.client(names[(index + 1) % 3])
                let created = try await creator.request(
                    "POST", "/v1/sessions", token: Self.token,
                    json: [
                        "prompt": .string("say hello \(index)"), "callback": ["url": .string(url)],
                    ])
                try #require(created.status == 201, "create: \(created.text)")
                let id = try #require(created["sessionId"]?.stringValue)
                let initiated = try await driver.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token)
                try #require(initiated.status == 202, "initiate: \(initiated.text)")
                ids.append(id)
            }
            let sessions = ids
            let a = try cluster.client("a")
            try await eventually(within: 60, "every runtime to be idle-stopped") {
                var all = true
                for id in sessions where try await Self.view(a, id)["runtime"]?["state"] != "stopped" { all = false }
                return all
            }
            for (index, id) in sessions.enumerated() {
                let view = try await Self.view(try cluster.client(names[(index + 2) % 3]), id)
                #expect(view["latestExecution"]?["status"] == "completed")
                Self.expectTimelyIdleStop(view)
                let events = try await Self.events(a, id)
                #expect(
                    events.filter { $0["type"]?.stringValue == EventType.runtimeStopped }.count == 1, "session \(id): \(events.map { $0["type"] ?? .null })")
                #expect(events.contains { "\($0)".contains("hello \(index)") })
            }
            // Every completion called back, none twice, whichever node's dispatcher found it.
            _ = try await receiver.waitForRequest(sessions.count, within: 30)
            let called = try receiver.received.map { try CallbackTests.bodyObject($0)["sessionId"]?.stringValue ?? "" }
            #expect(called.sorted() == sessions.sorted(), "callbacks: \(called.count) for \(sessions.count) executions")
        }
        try await eventually(within: 10, "no runtime left") { cluster.runtimesLeft.isEmpty }
    }

    @Test("driven from a node that neither hosts the runtime nor holds its connection: interrupt, then delete, whose processes the host takes down")
    func interruptAndDeleteFromAnotherNode() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        let (a, b, id) = try await Self.sessionOnNodeA(cluster, ["prompt": "tick 300 0.1"])
        try await eventually(within: 30, "the runtime to start on node a") { try await Self.view(b, id)["runtime"]?["state"] == "running" }
        let initiated = try await b.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token)
        try #require(initiated.status == 202, "initiate: \(initiated.text)")
        try await eventually(within: 30, "ticks recorded") { try await Self.events(b, id).filter { $0["type"] == "agent" }.count >= 3 }

        // The interrupt reaches the runtime through node a (which holds its connection).
        let interrupted = try await b.request("POST", "/v1/sessions/\(id)/interrupt", token: Self.token)
        #expect(interrupted.status == 200, "interrupt: \(interrupted.text)")
        #expect(interrupted["interrupted"] == true)
        try await eventually(within: 30, "the execution to end interrupted") {
            try await Self.view(a, id)["latestExecution"]?["status"] == "interrupted"
        }
        #expect(try await Self.view(b, id)["runtime"]?["state"] == "running", "an interrupt keeps the runtime")

        // Deleted through node b: node a, the host, takes the runtime's processes down.
        #expect(!cluster.runtimesLeft.isEmpty, "the runtime was gone already: the case was not tried")
        let deleted = try await b.request("DELETE", "/v1/sessions/\(id)", token: Self.token)
        #expect(deleted.status == 204, "delete: \(deleted.text)")
        #expect(try await a.request("GET", "/v1/sessions/\(id)", token: Self.token).status == 404)
        try await eventually(within: 15, "the host to take the runtime down") { cluster.runtimesLeft.isEmpty }
        let workspace = cluster.directory.appendingPathComponent("a/workspaces/\(id)")
        try await eventually(within: 10, "the host to remove the workspace") { !FileManager.default.fileExists(atPath: workspace.path) }
    }

    @Test("a node lost with its whole host: its claimed timers fire on another node once the lease lapses, and its runtime is recorded stopped once")
    func lostHostTimersFireElsewhere() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        let (a, b, id) = try await Self.sessionOnNodeA(cluster, ["prompt": "say hello", "idleTimeoutMs": 3000])
        try await eventually(within: 30, "the runtime to start on node a") { try await Self.view(a, id)["runtime"]?["state"] == "running" }
        try #require(try await a.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token).status == 202)
        try await eventually(within: 30, "the execution to complete") { try await Self.view(a, id)["latestExecution"]?["status"] == "completed" }
        // Node a wrote (and claimed) the idle deadline; then it dies with its runtimes.
        try await cluster.kill("a")
        for pid in cluster.runtimesLeft { Glibc.kill(pid, SIGKILL) }
        try await eventually(within: 20, "node b to stop the runtime") { try await Self.view(b, id)["runtime"]?["state"] == "stopped" }
        Self.expectTimelyIdleStop(try await Self.view(b, id))
        let events = try await Self.events(b, id)
        #expect(events.filter { $0["type"]?.stringValue == EventType.runtimeStopped }.count == 1)
    }

    @Test("the runtime log is read from any node: the other node forwards to the runtime's host; with the host gone, the answer says so")
    func runtimeLogFromAnyNode() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        let (a, b, id) = try await Self.sessionOnNodeA(cluster, ["prompt": "say logged"])
        try await eventually(within: 30, "the runtime to start on node a") { try await Self.view(b, id)["runtime"]?["state"] == "running" }
        let direct = try await a.request("GET", "/v1/sessions/\(id)/logs", token: Self.token)
        #expect(direct.status == 200 && direct.text.contains("connected"), "\(direct.text)")
        let forwarded = try await b.request("GET", "/v1/sessions/\(id)/logs", token: Self.token)
        #expect(forwarded.status == 200, "\(forwarded.text)")
        #expect(forwarded.text == direct.text || forwarded.text.hasPrefix(direct.text))
        #expect(try await b.request("GET", "/v1/sessions/\(id)/logs", token: "wrong-token").status == 401)
        // The host node dies: its disk is not this node's. Until the runtime moves (it is hosted
        // where it was launched), the answer names the node that is gone.
        try await cluster.kill("a")
        try await eventually(within: 30, "node b to see node a gone") {
            let answer = try await b.request("GET", "/v1/sessions/\(id)/logs", token: Self.token)
            return answer.status == 503 && answer.text.contains("gone")
        }
    }

    @Test("the per-user quota holds across nodes: creates sent to two nodes at once never leave the user with more live runtimes than the quota")
    func quotaAcrossNodes() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        try await cluster.start("a", extra: ["CLOUD_AGENT_MAX_RUNTIMES_PER_USER": "2"])
        try await cluster.start("b", extra: ["CLOUD_AGENT_MAX_RUNTIMES_PER_USER": "2"])
        let a = try cluster.client("a")
        let b = try cluster.client("b")
        // Busy agents: no runtime becomes idle, so none can be evicted for another.
        let answers = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<6 {
                let client = index % 2 == 0 ? a : b
                group.addTask {
                    try await client.request("POST", "/v1/sessions", token: Self.token, json: ["prompt": "sleep 20"]).status
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(answers.filter { $0 == 201 }.count == 2, "\(answers)")
        #expect(answers.filter { $0 == 429 }.count == 4, "\(answers)")
        let live = try await cluster.withStore { store in try await store.liveSessions(of: Owner(user: "local")) }
        #expect(live.count == 2)
        for session in live { _ = try await a.request("DELETE", "/v1/sessions/\(session.id)", token: Self.token) }
        try await eventually(within: 15, "no runtime left") { cluster.runtimesLeft.isEmpty }
    }

    @Test("the daily budget holds across nodes: the cost an agent reported through node a refuses a new execution on node b")
    func dailyBudgetAcrossNodes() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        try await cluster.start("a", extra: ["CLOUD_AGENT_USER_DAILY_BUDGET_USD": "1"])
        try await cluster.start("b", extra: ["CLOUD_AGENT_USER_DAILY_BUDGET_USD": "1"])
        let a = try cluster.client("a")
        let b = try cluster.client("b")
        let created = try await a.request("POST", "/v1/sessions", token: Self.token, json: ["prompt": "usage 10 10 1.5\nsay spent"])
        let id = try #require(created["sessionId"]?.stringValue, "create: \(created.text)")
        try #require(try await a.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token).status == 202)
        try await eventually(within: 30, "the execution to complete") { try await Self.view(a, id)["latestExecution"]?["status"] == "completed" }
        let other = try #require(try await b.request("POST", "/v1/sessions", token: Self.token, json: ["prompt": "say more"])["sessionId"]?.stringValue)
        let refused = try await b.request("POST", "/v1/sessions/\(other)/initiate", token: Self.token)
        #expect(refused.status == 429 && refused["error"]?["code"] == "BUDGET_EXCEEDED", "\(refused.text)")
        #expect(try await b.request("POST", "/v1/sessions/\(id)/messages", token: Self.token, json: ["prompt": "say again"]).status == 429)
        for session in [id, other] { _ = try await a.request("DELETE", "/v1/sessions/\(session)", token: Self.token) }
        try await eventually(within: 15, "no runtime left") { cluster.runtimesLeft.isEmpty }
    }

    @Test("capacity counts per host: a node with one runtime slot refuses a second busy start, while another node hosts its own")
    func capacityCountsPerHost() async throws {
        let cluster = try await Cluster()
        defer { cluster.tearDown() }
        try await cluster.start("a", extra: ["CLOUD_AGENT_MAX_RUNTIMES": "1"])
        try await cluster.start("b", extra: ["CLOUD_AGENT_MAX_RUNTIMES": "1"])
        let a = try cluster.client("a")
        let b = try cluster.client("b")
        var busy: [String] = []
        for client in [a, b] {
            let created = try await client.request("POST", "/v1/sessions", token: Self.token, json: ["prompt": "tick 300 0.1"])
            try #require(created.status == 201, "create: \(created.text)")
            let id = try #require(created["sessionId"]?.stringValue)
            try await eventually(within: 30, "the runtime to start") { try await Self.view(client, id)["runtime"]?["state"] == "running" }
            try #require(try await client.request("POST", "/v1/sessions/\(id)/initiate", token: Self.token).status == 202)
            try await eventually(within: 30, "the agent to work") { try await Self.view(client, id)["latestExecution"]?["status"] == "running" }
            busy.append(id)
        }
        // Each host runs one busy runtime: a third start on either is refused, not queued on the other.
        let third = try await a.request("POST", "/v1/sessions", token: Self.token, json: ["prompt": "say hello"])
        #expect(third.status == 503, "a third runtime on a full host: \(third.text)")
        #expect(third["error"]?["code"] == "RUNTIME_UNAVAILABLE")
        for id in busy { #expect(try await Self.view(a, id)["latestExecution"]?["status"] == "running") }
        for id in busy { _ = try await b.request("DELETE", "/v1/sessions/\(id)", token: Self.token) }
        try await eventually(within: 15, "no runtime left") { cluster.runtimesLeft.isEmpty }
    }
}
