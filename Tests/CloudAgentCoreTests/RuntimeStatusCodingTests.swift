import CloudAgentCore
import Foundation
import Testing

/// The stored runtime keeps its format: records written before `RuntimeStatus` carried its data
/// state by state read the same and write back the same bytes, and every step of a runtime's
/// life writes what it wrote then.
@Suite("Runtime status: the stored format")
struct RuntimeStatusCodingTests {
    /// A stored runtime in the old format, and what wrote it.
    struct Stored: Sendable, CustomTestStringConvertible {
        var name: String
        var json: String
        /// The old struct as the old code left it.
        var legacy: LegacyRuntimeStatus
        var testDescription: String { name }
    }

    static let process = RuntimeProcess(pid: 4242, startTime: 99)
    static let idle = StopReason(
        rule: .idle, at: Fixture.at(minutes(20)), lastActivityAt: Fixture.at(minutes(5)), idleMs: minutes(15), idleTimeoutMs: minutes(15),
        detail: "no activity")
    static let crashed = StopReason(rule: .crashed, at: Fixture.at(minutes(2)), detail: "runtime did not connect within 120000 ms of its start")

    /// Every state, as the old code wrote it at each point of a runtime's life.
    static let stored: [Stored] = {
        var legacy = LegacyRuntimeStatus()
        var all = [Stored(name: "stopped: never started", json: #"{"state":"stopped"}"#, legacy: legacy)]
        legacy.requestStart(at: Fixture.at(seconds(1)))
        all.append(
            Stored(name: "starting: requested", json: #"{"ackedSeq":0,"cold":false,"requestedAt":1767323046000,"state":"starting"}"#, legacy: legacy))
        legacy.instanceId = "i-1"
        legacy.secretHash = "h-1"
        legacy.hostNode = "a"
        legacy.process = process
        legacy.launchedAt = Fixture.at(seconds(3))
        legacy.sandbox = "bwrap"
        all.append(
            Stored(
                name: "starting: launched",
                json:
                    #"{"ackedSeq":0,"cold":false,"hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"process":{"pid":4242,"startTime":99},"requestedAt":1767323046000,"sandbox":"bwrap","secretHash":"h-1","state":"starting"}"#,
                legacy: legacy))
        let launched = legacy
        legacy.markRunning(at: Fixture.at(seconds(4)))
        legacy.connectedNode = "b"
        legacy.ackedSeq = 7
        all.append(
            Stored(
                name: "running",
                json:
                    #"{"ackedSeq":7,"cold":false,"connectedAt":1767323049000,"connectedNode":"b","hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"process":{"pid":4242,"startTime":99},"requestedAt":1767323046000,"sandbox":"bwrap","secretHash":"h-1","startedAt":1767323049000,"state":"running"}"#,
                legacy: legacy))
        legacy.connectedAt = Fixture.at(minutes(1))
        all.append(
            Stored(
                name: "running: reconnected",
                json:
                    #"{"ackedSeq":7,"cold":false,"connectedAt":1767323105000,"connectedNode":"b","hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"process":{"pid":4242,"startTime":99},"requestedAt":1767323046000,"sandbox":"bwrap","secretHash":"h-1","startedAt":1767323049000,"state":"running"}"#,
                legacy: legacy))
        legacy.beginStopping(idle)
        all.append(
            Stored(
                name: "stopping",
                json:
                    #"{"ackedSeq":7,"cold":false,"connectedAt":1767323105000,"connectedNode":"b","hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"process":{"pid":4242,"startTime":99},"requestedAt":1767323046000,"sandbox":"bwrap","secretHash":"h-1","startedAt":1767323049000,"state":"stopping","stopReason":{"at":1767324245000,"detail":"no activity","idleMs":900000,"idleTimeoutMs":900000,"lastActivityAt":1767323345000,"rule":"idle"}}"#,
                legacy: legacy))
        legacy.recordStopped(at: Fixture.at(minutes(20) + seconds(1)), reason: idle)
        all.append(
            Stored(
                name: "stopped after a run",
                json:
                    #"{"ackedSeq":7,"cold":false,"connectedAt":1767323105000,"connectedNode":"b","hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"requestedAt":1767323046000,"sandbox":"bwrap","startedAt":1767323049000,"state":"stopped","stopReason":{"at":1767324245000,"detail":"no activity","idleMs":900000,"idleTimeoutMs":900000,"lastActivityAt":1767323345000,"rule":"idle"},"stoppedAt":1767324246000}"#,
                legacy: legacy))
        legacy.requestStart(at: Fixture.at(hours(1)))
        all.append(
            Stored(
                name: "starting: a cold start",
                json:
                    #"{"ackedSeq":0,"cold":true,"connectedNode":"b","hostNode":"a","requestedAt":1767326645000,"sandbox":"bwrap","state":"starting"}"#,
                legacy: legacy))
        var failed = launched
        failed.beginStopping(crashed)
        all.append(
            Stored(
                name: "stopping: never connected",
                json:
                    #"{"ackedSeq":0,"cold":false,"hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"process":{"pid":4242,"startTime":99},"requestedAt":1767323046000,"sandbox":"bwrap","secretHash":"h-1","state":"stopping","stopReason":{"at":1767323165000,"detail":"runtime did not connect within 120000 ms of its start","rule":"crashed"}}"#,
                legacy: failed))
        failed.recordStopped(at: Fixture.at(minutes(2) + seconds(1)), reason: crashed)
        all.append(
            Stored(
                name: "stopped: never connected",
                json:
                    #"{"ackedSeq":0,"cold":false,"hostNode":"a","instanceId":"i-1","launchedAt":1767323048000,"requestedAt":1767323046000,"sandbox":"bwrap","state":"stopped","stopReason":{"at":1767323165000,"detail":"runtime did not connect within 120000 ms of its start","rule":"crashed"},"stoppedAt":1767323166000}"#,
                legacy: failed))
        all.append(
            Stored(
                name: "stopped: a dormant session (the benchmark's)",
                json:
                    #"{"requestedAt":1767323045000,"startedAt":1767323046200,"state":"stopped","stopReason":{"at":1767324245000,"detail":"no activity","idleMs":900000,"idleTimeoutMs":900000,"lastActivityAt":1767323345000,"rule":"idle"},"stoppedAt":1767324245000}"#,
                legacy: LegacyRuntimeStatus(
                    state: .stopped, startedAt: Fixture.at(1200), requestedAt: Fixture.t0, stoppedAt: Fixture.at(minutes(20)), stopReason: idle)))
        return all
    }()

    @Test("a stored runtime of each state reads back its fields and writes back the same bytes", arguments: stored)
    func storedRoundTrip(_ stored: Stored) throws {
        // The text is what the old struct wrote.
        #expect(try RecordCoding.encode(stored.legacy) == stored.json)
        let runtime = try RecordCoding.decode(RuntimeStatus.self, from: stored.json)
        #expect(LegacyRuntimeStatus(runtime) == stored.legacy)
        #expect(try RecordCoding.encode(runtime) == stored.json)
    }

    @Test("every state of the old format is among the stored runtimes")
    func everyStateStored() throws {
        let states = try Set(Self.stored.map { try RecordCoding.decode(RuntimeStatus.self, from: $0.json).state })
        #expect(states == Set(RuntimeState.allCases))
    }

    @Test("within a session record, the runtime's bytes are kept too")
    func inASessionRecord() throws {
        let running = try #require(Self.stored.first { $0.name == "running" })
        var session = Fixture.session()
        session.runtime = try RecordCoding.decode(RuntimeStatus.self, from: running.json)
        let text = try RecordCoding.encode(session)
        #expect(text.contains(#""runtime":\#(running.json)"#))
        #expect(try RecordCoding.encode(RecordCoding.decode(SessionRecord.self, from: text)) == text)
    }

    /// A step of a runtime's life: what the reducers do, as the old code wrote it and as the
    /// states' transitions do it.
    enum Step {
        case requestStart(Int64)
        case launching(String, host: String?)
        case launched(Int64)
        case hello(Int64, node: String?)
        case ack(Int64)
        case beginStopping(StopReason)
        case recordStopped(Int64, StopReason)
        case moveHost(String?)

        func apply(to legacy: inout LegacyRuntimeStatus) {
            switch self {
            case .requestStart(let at): legacy.requestStart(at: Fixture.at(at))
            case .launching(let id, let host):
                legacy.instanceId = id
                legacy.secretHash = "hash-\(id)"
                legacy.hostNode = host
            case .launched(let at):
                legacy.process = RuntimeProcess(pid: Int32(at % 30_000), startTime: 1)
                legacy.launchedAt = Fixture.at(at)
                legacy.sandbox = "none"
            case .hello(let at, let node):
                if legacy.state == .starting { legacy.markRunning(at: Fixture.at(at)) } else { legacy.connectedAt = Fixture.at(at) }
                legacy.connectedNode = node
            case .ack(let seq): legacy.ackedSeq = seq
            case .beginStopping(let reason): legacy.beginStopping(reason)
            case .recordStopped(let at, let reason): legacy.recordStopped(at: Fixture.at(at), reason: reason)
            case .moveHost(let node): legacy.hostNode = node
            }
        }

        func apply(to runtime: inout RuntimeStatus) throws {
            switch self {
            case .requestStart(let at): try runtime.requestStart(at: Fixture.at(at))
            case .launching(let id, let host): try runtime.recordLaunching(instanceId: id, secretHash: "hash-\(id)", hostNode: host)
            case .launched(let at): try runtime.recordLaunched(RuntimeProcess(pid: Int32(at % 30_000), startTime: 1), sandbox: "none", at: Fixture.at(at))
            case .hello(let at, let node):
                if runtime.state == .starting { try runtime.markRunning(at: Fixture.at(at)) }
                try runtime.recordConnection(at: Fixture.at(at), node: node)
            case .ack(let seq): runtime.recordAcknowledged(through: seq)
            case .beginStopping(let reason): try runtime.beginStopping(reason)
            case .recordStopped(let at, let reason): try runtime.markStopped(at: Fixture.at(at), reason: reason)
            case .moveHost(let node): runtime.moveHost(to: node)
            }
        }
    }

    @Test("a runtime's life writes, step by step, what the old code wrote")
    func lifeWritesTheSame() throws {
        let deleted = StopReason(rule: .deleted, at: Fixture.at(hours(3)), detail: "session deleted")
        let steps: [Step] = [
            .requestStart(0), .launching("i-1", host: "a"), .launched(seconds(2)), .hello(seconds(3), node: "a"), .ack(3),
            .hello(minutes(1), node: "b"), .ack(5), .beginStopping(Self.idle), .ack(6), .recordStopped(minutes(21), Self.idle), .ack(7),
            .moveHost("c"), .requestStart(hours(1)), .launching("i-2", host: nil), .hello(hours(1) + seconds(1), node: nil),
            .launched(hours(1) + seconds(2)), .recordStopped(hours(1) + minutes(1), Self.crashed), .requestStart(hours(2)),
            .launching("i-3", host: "c"), .launched(hours(2) + seconds(1)), .moveHost("d"), .beginStopping(Self.crashed),
            .moveHost("e"), .recordStopped(hours(3), deleted), .requestStart(hours(4)), .recordStopped(hours(4) + seconds(1), Self.crashed),
        ]
        var legacy = LegacyRuntimeStatus()
        var runtime = RuntimeStatus.neverStarted
        for (index, step) in steps.enumerated() {
            step.apply(to: &legacy)
            try step.apply(to: &runtime)
            #expect(try RecordCoding.encode(runtime) == RecordCoding.encode(legacy), "step \(index): \(step)")
            #expect(LegacyRuntimeStatus(runtime) == legacy, "step \(index): \(step)")
        }
    }

    @Test(
        "a stored state without a field it always has is not read",
        arguments: [
            #"{"state":"starting"}"#, #"{"requestedAt":1767323046000,"state":"running"}"#,
            #"{"connectedAt":1767323049000,"requestedAt":1767323046000,"state":"running"}"#, #"{"requestedAt":1767323046000,"state":"stopping"}"#,
            #"{"state":"paused"}"#, #"{"startedAt":1767323049000}"#,
        ])
    func malformed(json: String) {
        #expect(throws: DecodingError.self) { try RecordCoding.decode(RuntimeStatus.self, from: json) }
    }

    @Test("a start's cold flag and acknowledged seq read as they always were read when a record lacks them")
    func missingColdAndAck() throws {
        let runtime = try RecordCoding.decode(RuntimeStatus.self, from: #"{"requestedAt":1767323046000,"state":"starting"}"#)
        #expect(runtime == .starting(RuntimeStatus.Starting(requestedAt: Fixture.at(seconds(1)), cold: false, ackedSeq: 0)))
    }
}

/// `RuntimeStatus` as it was before its states carried their own data: one struct of optionals
/// with a state, its synthesized `Codable`, its transitions, and the writes the reducers made on
/// it (`recordStopped`). The oracle of the stored format.
struct LegacyRuntimeStatus: Sendable, Equatable, Codable {
    var state: RuntimeState
    var startedAt: Date?
    var requestedAt: Date?
    var launchedAt: Date?
    var stoppedAt: Date?
    var stopReason: StopReason?
    var instanceId: String?
    var secretHash: String?
    var process: RuntimeProcess?
    var cold: Bool?
    var ackedSeq: Int64?
    var connectedAt: Date?
    var sandbox: String?
    var hostNode: String?
    var connectedNode: String?

    init(state: RuntimeState = .stopped, startedAt: Date? = nil, requestedAt: Date? = nil, stoppedAt: Date? = nil, stopReason: StopReason? = nil) {
        self.state = state
        self.startedAt = startedAt
        self.requestedAt = requestedAt
        self.stoppedAt = stoppedAt
        self.stopReason = stopReason
    }

    /// The new runtime's fields, as the old struct held them.
    init(_ runtime: RuntimeStatus) {
        self.init(
            state: runtime.state, startedAt: runtime.startedAt, requestedAt: runtime.requestedAt, stoppedAt: runtime.stoppedAt, stopReason: runtime.stopReason)
        launchedAt = runtime.launchedAt
        instanceId = runtime.instanceId
        secretHash = runtime.secretHash
        process = runtime.process
        cold = runtime.cold
        ackedSeq = runtime.ackedSeq
        connectedAt = runtime.connectedAt
        sandbox = runtime.sandbox
        hostNode = runtime.hostNode
        connectedNode = runtime.connectedNode
    }

    mutating func requestStart(at date: Date) {
        precondition(state == .stopped)
        cold = startedAt != nil
        state = .starting
        requestedAt = date
        launchedAt = nil
        startedAt = nil
        stoppedAt = nil
        stopReason = nil
        instanceId = nil
        secretHash = nil
        process = nil
        ackedSeq = 0
        connectedAt = nil
    }

    mutating func markRunning(at date: Date) {
        precondition(state == .starting)
        state = .running
        startedAt = date
        connectedAt = date
    }

    mutating func beginStopping(_ reason: StopReason) {
        precondition(state == .starting || state == .running)
        state = .stopping
        stopReason = reason
    }

    mutating func markStopped(at date: Date, reason: StopReason? = nil) {
        precondition(state != .stopped)
        state = .stopped
        stoppedAt = date
        if let reason { stopReason = reason }
    }

    /// The runtime's part of `SessionReducer.recordStopped`, as it was.
    mutating func recordStopped(at date: Date, reason: StopReason) {
        if state != .stopping { beginStopping(reason) }
        markStopped(at: date, reason: reason)
        process = nil
        secretHash = nil
    }
}
