import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import NIOWebSocket
import PostgresNIO
import ServiceLifecycle
import WSClient

/// `stream`: simulated runtimes emit agent events at a set rate into a real control plane while
/// several live-stream subscribers per session read them; latency is from the moment an event
/// was due to be sent (so a sender held back by the server is not hidden) to its arrival at a
/// subscriber. Then each runtime sends as fast as acknowledgements allow (a window of unacked
/// events): the peak ingest rate. Baseline: a raw hummingbird-websocket echo server driven the
/// same way by the same number of connections (latency = round trip, peak = echoes per second);
/// on PostgreSQL the echo first INSERTs each frame into the database (one transaction each).
struct StreamBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream", abstract: "Ingest → subscriber latency at a set rate and peak events/s, against a raw WebSocket echo."
    )

    @OptionGroup var options: BenchOptions
    @OptionGroup var backend: StoreOptions
    @Option(help: "Simulated runtimes (default: 10, quick: 2).") var runtimes: Int?
    @Option(help: "Stream subscribers per session (default: 4, quick: 2).") var subscribers: Int?
    @Option(help: "Events per second in all, for the latency phase (default: 5000, quick: 500).") var rate: Double?
    @Option(help: "Measured seconds of the latency phase (default: 10, quick: 3).") var seconds: Double?
    @Option(help: "Measured seconds of the peak phase (default: 5, quick: 2).") var peakSeconds: Double?
    @Option(help: "Unacknowledged events a runtime may have in flight in the peak phase.") var window: Int = 64

    func run() async throws {
        let figures = try await backend.withDatabases(note: options.note) { databases in try await measure(databases) }
        options.emit(figures)
    }

    var plan: Plan {
        Plan(
            connections: runtimes ?? (options.quick ? 2 : 10), rate: rate ?? (options.quick ? 500 : 5000),
            warmup: options.quick ? 0.5 : 1, seconds: seconds ?? (options.quick ? 3 : 10), peakSeconds: peakSeconds ?? (options.quick ? 2 : 5),
            window: window
        )
    }

    private func measure(_ databases: BenchDatabases) async throws -> [Figure] {
        let plan = self.plan
        let subscribers = self.subscribers ?? (options.quick ? 2 : 4)
        let scratch = try ScratchDirectory("stream")
        defer { scratch.remove() }
        let clients = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        options.note(
            "stream: \(plan.connections) runtimes × \(subscribers) subscribers, \(plan.rate) events/s for \(plan.seconds) s, then peak for \(plan.peakSeconds) s"
        )
        let product: Outcome, echo: Outcome
        do {
            product = try await measureProduct(
                plan: plan, subscribers: subscribers, directory: scratch.url, database: try await databases.fresh(), clients: clients)
            if case .postgres(let postgres) = try await databases.fresh() {
                options.note("stream: baseline, raw WebSocket echo committing each frame to PostgreSQL, \(plan.connections) connections")
                echo = try await withPostgresClient(postgres) { client in
                    _ = try await client.query("CREATE TABLE echo_events (id BIGSERIAL PRIMARY KEY, data TEXT NOT NULL)", logger: PostgresServer.logger)
                        .collect()
                    return try await measureEcho(plan: plan, clients: clients, persist: client)
                }
            } else {
                options.note("stream: baseline, raw WebSocket echo with \(plan.connections) connections")
                echo = try await measureEcho(plan: plan, clients: clients, persist: nil)
            }
        } catch {
            try? await clients.shutdownGracefully()
            throw error
        }
        try? await clients.shutdownGracefully()

        var params: [String: JSONValue] = [
            "runtimes": .number(Double(plan.connections)), "subscribersPerSession": .number(Double(subscribers)),
            "rate": .number(plan.rate), "seconds": .number(plan.seconds), "peakSeconds": .number(plan.peakSeconds),
            "window": .number(Double(plan.window)), "pacedWindow": .number(Double(Driver.pacedWindow)), "eventsSent": .number(Double(product.sent)),
            "subscriberOverflows": .number(Double(product.overflows)),
            "undeliveredAfter300s": .number(Double(product.undelivered)),
            "latency": .object(product.latencies.summary), "baselineLatency": .object(echo.latencies.summary),
            "latencyFrom": "when the event was due to be sent (coordinated-omission safe)",
            "baseline": backend.onPostgres
                ? "raw hummingbird-websocket echo that first INSERTs each frame into PostgreSQL (its own transaction, postgres-nio pool), same connections and frames, round trip"
                : "raw hummingbird-websocket echo, same connections and frames, round trip",
            "streamBufferEvents": .number(Double(Self.streamBuffer)),
        ]
        params = databases.tagged(params)
        let latency = params
        params["peakDeliveredToSubscribersPerSecond"] = .number(product.peakDelivered.rounded())
        return [
            Figure(
                backend.name("stream.latency_p50_ms"), product.latencies.percentileMs(50), unit: "ms", baseline: echo.latencies.percentileMs(50),
                params: latency),
            Figure(
                backend.name("stream.latency_p99_ms"), product.latencies.percentileMs(99), unit: "ms", baseline: echo.latencies.percentileMs(99),
                params: latency),
            Figure(backend.name("stream.peak_events_per_second"), product.peak, unit: "events/s (acknowledged)", baseline: echo.peak, params: params),
        ]
    }

    static let streamBuffer = 16_384

    struct Plan: Sendable {
        var connections: Int
        var rate: Double
        var warmup: Double
        var seconds: Double
        var peakSeconds: Double
        var window: Int
        var perConnectionRate: Double { rate / Double(connections) }
    }

    struct Outcome: Sendable {
        var latencies: Latencies
        var peak: Double
        var peakDelivered: Double = 0
        var sent: Int = 0
        var overflows: Int = 0
        var undelivered: Int = 0
    }

    // MARK: The product

    func measureProduct(plan: Plan, subscribers: Int, directory: URL, database: BenchDatabase, clients: any EventLoopGroup) async throws -> Outcome {
        var configuration = InProcessServer.configuration(directory: directory, database: database)
        configuration.streamBufferEvents = Self.streamBuffer
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        let node = Node(plane: server.plane, webSocketBase: server.webSocketBase)
        do {
            let outcome = try await Self.measure(
                plan: plan, subscribers: subscribers, ingest: node, subscribe: node, clients: clients, logger: InProcessServer.logger(options.logLevel)
            )
            await server.stop()
            return outcome
        } catch {
            await server.stop()
            throw error
        }
    }

    /// A control plane a benchmark talks to.
    struct Node: Sendable {
        var plane: ControlPlane
        var webSocketBase: String
    }

    /// The two phases with the runtimes connected to `ingest` and the subscribers to `subscribe`
    /// (the same node, or two nodes on one database).
    static func measure(
        plan: Plan, subscribers: Int, ingest: Node, subscribe: Node, clients: any EventLoopGroup, logger: Logger
    ) async throws -> Outcome {
        let driver = Driver(plan: plan)
        let delivered = Counter()
        var undelivered = 0
        var readers: [(StreamSubscriber, Task<Int?, any Error>, Locked<Latencies>)] = []
        var runners: [Task<Void, any Error>] = []
        do {
            let seats = try await SimulatedRuntimeSeat.insert(plan.connections, into: ingest.plane.store)
            // Subscribers first, so that they see every event live.
            for seat in seats {
                for _ in 0..<subscribers {
                    let subscriber = StreamSubscriber()
                    let latencies = Locked(Latencies())
                    let epoch = driver.epoch
                    let task = Task {
                        try await subscriber.run(
                            url: subscribe.webSocketBase + "/v1/sessions/\(seat.sessionId)/stream", token: InProcessServer.token,
                            eventLoopGroup: clients, logger: logger
                        ) { text, arrived in
                            guard let frame = try? JSONDecoder().decode(StreamFrame.self, from: Data(text.utf8)), let sentAt = frame.data?.t else { return }
                            delivered.add(1)
                            if frame.data?.m == 1 {
                                let now = arrived &- epoch
                                let micros = now > sentAt ? (now - sentAt) / 1000 : 0
                                latencies.withLock { $0.record(micros: micros) }
                            }
                        }
                    }
                    readers.append((subscriber, task, latencies))
                }
            }
            let hub = subscribe.plane.sessions.hub
            guard await waitUntil(30, { seats.allSatisfy { hub.subscriberCount($0.id) >= subscribers } }) else {
                throw BenchFailure("the stream subscribers did not all connect")
            }
            for seat in seats {
                runners.append(
                    Task {
                        try await driver.guarding {
                            try await SimulatedRuntime.connect(
                                url: ingest.webSocketBase + "/v1/runtime/connect", seat: seat, eventLoopGroup: clients, logger: logger,
                                onAck: { driver.acked.add(Int($0)) }
                            ) { runtime in try await driver.drive(RuntimeSink(runtime: runtime)) }
                        }
                    })
            }
            let (sent, peak) = try await driver.conduct {
                // Every event of the latency phase reached every subscriber (bounded).
                _ = await waitUntil(300) { delivered.count >= driver.sent.count * subscribers }
                undelivered = max(0, driver.sent.count * subscribers - delivered.count)
            } peakCounter: {
                delivered.count
            }
            var all = Latencies()
            for (_, _, latencies) in readers { all.add(latencies.value) }
            for runner in runners { try await runner.value }
            for (subscriber, _, _) in readers { await subscriber.close() }
            var overflows = 0
            for (_, task, _) in readers {
                if (try? await task.value) == 4001 { overflows += 1 }
            }
            return Outcome(latencies: all, peak: peak.acked, peakDelivered: peak.other, sent: sent, overflows: overflows, undelivered: undelivered)
        } catch {
            for runner in runners { runner.cancel() }
            for (subscriber, task, _) in readers {
                await subscriber.close()
                task.cancel()
            }
            throw error
        }
    }

    /// What a subscriber reads of a stream frame.
    struct StreamFrame: Decodable {
        struct Payload: Decodable {
            var t: UInt64?
            var m: Int?
        }
        var data: Payload?
    }

    // MARK: The baseline

    /// The echo server; with `persist`, each frame is first INSERTed into `echo_events` (the raw
    /// PostgreSQL equivalent of storing an event before acknowledging it, one transaction per frame).
    func measureEcho(plan: Plan, clients: any EventLoopGroup, persist: PostgresClient?) async throws -> Outcome {
        let logger = InProcessServer.logger(options.logLevel)
        let router = Router(context: BasicWebSocketRequestContext.self)
        router.ws("echo") { inbound, outbound, _ in
            for try await message in inbound.messages(maxSize: 1 << 20) {
                guard case .text(let text) = message else { continue }
                if let persist {
                    _ = try await persist.query("INSERT INTO echo_events (data) VALUES (\(text))", logger: PostgresServer.logger).collect()
                }
                try await outbound.write(.text(text))
            }
        }
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "echo"),
            onServerRunning: { channel in
                continuation.yield(channel.localAddress?.port ?? 0)
                continuation.finish()
            },
            logger: logger
        )
        let server = try await RunningService.start(app, ports: ports, logger: logger)
        let port = server.port
        let driver = Driver(plan: plan)
        var runners: [Task<Void, any Error>] = []
        var latencies: [Locked<Latencies>] = []
        for _ in 0..<plan.connections {
            let recorded = Locked(Latencies())
            latencies.append(recorded)
            runners.append(
                Task {
                    try await driver.guarding {
                        try await EchoSink.connect(url: "ws://127.0.0.1:\(port)/echo", eventLoopGroup: clients, logger: logger, epoch: driver.epoch) { micros in
                            recorded.withLock { $0.record(micros: micros) }
                        } onAck: {
                            driver.acked.add(Int($0))
                        } body: { sink in
                            try await driver.drive(sink)
                        }
                    }
                })
        }
        do {
            let (_, peak) = try await driver.conduct {
            } peakCounter: {
                0
            }
            for runner in runners { try await runner.value }
            await server.stop()
            var all = Latencies()
            for recorded in latencies { all.add(recorded.value) }
            return Outcome(latencies: all, peak: peak.acked)
        } catch {
            for runner in runners { runner.cancel() }
            await server.stop()
            throw error
        }
    }
}

// MARK: Driving senders

/// Something events can be sent into and acknowledged by.
protocol EventSink: Sendable {
    /// Sends an agent event whose data carries `t` (due time, ns since the driver's epoch) and `m`
    /// (1 = measured); returns its seq.
    func send(t: UInt64, measured: Bool) async throws -> Int64
    var acked: Int64 { get }
    func waitForAck(_ seq: Int64, timeoutSeconds: Double) async throws
    func waitForAck(_ seq: Int64) async
}

extension EventSink {
    static var padding: String { String(repeating: "x", count: 120) }
    static func dataJSON(t: UInt64, measured: Bool) -> String {
        "{\"kind\":\"text\",\"text\":\"benchmark event \(padding)\",\"t\":\(t),\"m\":\(measured ? 1 : 0)}"
    }
}

struct RuntimeSink: EventSink {
    let runtime: SimulatedRuntime

    func send(t: UInt64, measured: Bool) async throws -> Int64 {
        try await runtime.sendEvent(kind: "agent", dataJSON: Self.dataJSON(t: t, measured: measured))
    }
    var acked: Int64 { runtime.acked }
    func waitForAck(_ seq: Int64, timeoutSeconds: Double) async throws { try await runtime.waitForAck(seq, timeoutSeconds: timeoutSeconds) }
    func waitForAck(_ seq: Int64) async { await runtime.waitForAck(seq) }
}

/// A client of the echo server that sends the same event frames as a simulated runtime; an
/// echo counts as that event's acknowledgement.
final class EchoSink: EventSink {
    private let outbound: WebSocketOutboundWriter
    private let nextSeq = Counter()
    private let acks = AckWaiters()

    private init(outbound: WebSocketOutboundWriter) { self.outbound = outbound }

    struct Echo: Decodable {
        struct Event: Decodable {
            var seq: Int64
            var data: StreamBench.StreamFrame.Payload
        }
        var event: Event
    }

    static func connect(
        url: String, eventLoopGroup: any EventLoopGroup, logger: Logger, epoch: UInt64, record: @escaping @Sendable (UInt64) -> Void,
        onAck: @escaping @Sendable (Int64) -> Void, body: @escaping @Sendable (EchoSink) async throws -> Void
    ) async throws {
        var configuration = WebSocketClientConfiguration()
        configuration.maxFrameSize = 1 << 20
        try await WebSocketClient.connect(url: url, configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger) { inbound, outbound, _ in
            let sink = EchoSink(outbound: outbound)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask {
                    defer { sink.ended() }
                    for try await message in inbound.messages(maxSize: 1 << 20) {
                        let arrived = Measure.monotonicNanos()
                        guard case .text(let text) = message, let echo = try? JSONDecoder().decode(Echo.self, from: Data(text.utf8)) else { continue }
                        if echo.event.data.m == 1, let t = echo.event.data.t {
                            let now = arrived &- epoch
                            record(now > t ? (now - t) / 1000 : 0)
                        }
                        sink.acknowledged(echo.event.seq, onAck: onAck)
                    }
                }
                do {
                    try await body(sink)
                } catch {
                    tasks.cancelAll()
                    throw error
                }
                try? await outbound.close(.normalClosure, reason: nil)
                try await tasks.waitForAll()
            }
        }
    }

    private func acknowledged(_ seq: Int64, onAck: @Sendable (Int64) -> Void) {
        let delta = acks.acknowledge(seq)
        if delta > 0 { onAck(delta) }
    }

    private func ended() { acks.close() }

    func send(t: UInt64, measured: Bool) async throws -> Int64 {
        nextSeq.add(1)
        let seq = Int64(nextSeq.count)
        let frame =
            "{\"type\":\"event\",\"event\":{\"seq\":\(seq),\"executionId\":\"exc_echo\",\"kind\":\"agent\",\"at\":\(Date().millisecondsSince1970),\"data\":\(Self.dataJSON(t: t, measured: measured))}}"
        try await outbound.write(.text(frame))
        return seq
    }

    var acked: Int64 { acks.acked }

    func waitForAck(_ seq: Int64) async { await acks.wait(for: seq) }

    func waitForAck(_ seq: Int64, timeoutSeconds: Double) async throws {
        try await withDeadline(timeoutSeconds, "the echo of frame \(seq)") { [self] in
            await waitForAck(seq)
            guard acked >= seq else { throw BenchFailure("the echo connection ended before frame \(seq) came back") }
        }
    }
}

/// Runs the two phases on every connection: a paced latency phase (warm-up + measured), then a
/// windowed peak phase. The conductor opens each phase once every connection is ready for it.
final class Driver: Sendable {
    let plan: StreamBench.Plan
    let epoch = Measure.monotonicNanos()
    let ready = Counter(), pacedDone = Counter(), sent = Counter(), acked = Counter()
    private let pacedGate = Gate(), peakGate = Gate()
    private let pacedStart = Locked<UInt64>(0), peakEnd = Locked<ContinuousClock.Instant>(.now)

    private let failures = Locked<[String]>([])

    /// Unacknowledged events a connection may have in flight in the paced phase.
    static let pacedWindow = 1000

    init(plan: StreamBench.Plan) { self.plan = plan }

    /// Runs one connection, noting its failure for the conductor.
    func guarding(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            failures.withLock { $0.append("\(error)") }
            throw error
        }
    }

    /// One connection's part. Bounded in time: each phase ends on the clock.
    func drive(_ sink: some EventSink) async throws {
        ready.add(1)
        await pacedGate.wait()
        // Paced: event i of this connection is due at start + i / rate.
        let start = pacedStart.value
        let interval = 1e9 / plan.perConnectionRate
        let total = Int(plan.perConnectionRate * (plan.warmup + plan.seconds))
        let warmupEvents = Int(plan.perConnectionRate * plan.warmup)
        var last: Int64 = 0
        for index in 0..<total {
            let due = start + UInt64(Double(index) * interval)
            let now = Measure.monotonicNanos() &- epoch
            if due > now { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
            // A bounded backlog, as a runtime's outbox: the server's WebSocket pings a connection
            // every 30 s and drops it when the pong (queued behind unread events) is late.
            if last - sink.acked >= Int64(Self.pacedWindow) { await sink.waitForAck(last - Int64(Self.pacedWindow) + 1) }
            last = try await sink.send(t: due, measured: index >= warmupEvents)
            sent.add(1)
        }
        try await sink.waitForAck(last, timeoutSeconds: 300)
        pacedDone.add(1)
        await peakGate.wait()
        // Peak: as fast as the window of unacknowledged events allows, until the clock says stop.
        let end = peakEnd.value
        for index in 0..<100_000_000 {
            if index % 32 == 0 {
                await Task.yield()
                if ContinuousClock.now >= end { break }
            }
            if last - sink.acked >= Int64(plan.window) { await sink.waitForAck(last - Int64(plan.window) + 1) }
            last = try await sink.send(t: Measure.monotonicNanos() &- epoch, measured: false)
        }
        try await sink.waitForAck(last, timeoutSeconds: 60)
    }

    /// Opens the phases; returns the events sent in the paced phase and the peak rates
    /// (acknowledged events/s, and `peakCounter`'s rate over the same window).
    func conduct(afterPaced: () async -> Void, peakCounter: () -> Int) async throws -> (sent: Int, peak: (acked: Double, other: Double)) {
        func failed() throws {
            if let failure = failures.value.first { throw BenchFailure("a connection failed: \(failure)") }
        }
        let all = await waitUntil(60) { self.ready.count >= self.plan.connections || !self.failures.value.isEmpty }
        try failed()
        guard all else { throw BenchFailure("only \(ready.count) of \(plan.connections) connections got ready") }
        pacedStart.withLock { $0 = Measure.monotonicNanos() &- epoch + 5_000_000 }
        pacedGate.open()
        let paced = await waitUntil(plan.warmup + plan.seconds + 320) { self.pacedDone.count >= self.plan.connections || !self.failures.value.isEmpty }
        try failed()
        guard paced else {
            throw BenchFailure("the paced phase did not finish (\(pacedDone.count) of \(plan.connections) connections done)")
        }
        await afterPaced()
        let sentInPaced = sent.count
        let settle = 0.5
        peakEnd.withLock { $0 = .now + .milliseconds(Int((settle + plan.peakSeconds + 0.5) * 1000)) }
        peakGate.open()
        try await Task.sleep(for: .milliseconds(Int(settle * 1000)))
        let acked0 = acked.count, other0 = peakCounter(), t0 = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(Int(plan.peakSeconds * 1000)))
        let acked1 = acked.count, other1 = peakCounter(), elapsed = Measure.seconds(since: t0)
        try failed()
        return (sentInPaced, (Double(acked1 - acked0) / elapsed, Double(other1 - other0) / elapsed))
    }
}
