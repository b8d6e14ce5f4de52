import CloudAgentCore
import CloudAgentEngine
import CloudAgentSandbox
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle

/// Everything a running control plane is made of, built once from its configuration.
public struct ControlPlane: Sendable {
    public let configuration: ServerConfiguration
    public let store: any SessionStore
    public let sessions: SessionService
    public let ledger: SessionLedger
    public let gateway: RuntimeGateway
    public let lifecycle: RuntimeLifecycle
    /// The way the lifecycle's steps record what they find.
    let performer: Engine
    public let rules: RuleRunner
    public let scheduler: WakeUpScheduler
    public let supervisor: RuntimeSupervisor
    public let heartbeats: HeartbeatBatcher
    public let callbacks: CallbackDispatcher
    public let metrics: ServerMetrics
    /// The bearer token of user `local`.
    public let localToken: String
    public let tickets: StreamTickets
    public let coordinator: NodeCoordinator
    public let logger: Logger

    /// Opens the data directory (creating the secret key and token files on first use) and
    /// builds the control plane on `store` (the caller chooses the store: `StoreFactory` in the
    /// CLI).
    public static func open(
        _ configuration: ServerConfiguration, store: any SessionStore, membership: any ClusterMembership = SingleNode(),
        clock: any WallClock = SystemWallClock(), metrics: ServerMetrics = ServerMetrics(), logger: Logger
    ) async throws -> ControlPlane {
        let cluster = ClusterView(
            nodeId: membership.nodeId, isShared: membership.isShared, leaseMs: configuration.nodeLeaseMs, store: store.availability
        )
        let data = try DataDirectory(configuration.dataDirectory)
        let secretBox = try SecretBox(base64Key: configuration.secretKey ?? data.secretKey())
        let localToken = try configuration.apiToken ?? data.apiToken()
        let tickets = StreamTickets(
            key: try await store.settingSavingIfAbsent("stream-ticket-key", value: BearerToken.generate(prefix: "")),
            lifetimeMs: configuration.streamTicketLifetimeMs
        )
        let scheduler = WakeUpScheduler(
            store: store, clock: clock, logger: logger,
            window: .init(
                aheadMs: configuration.wakeUpWindowMs, refillMs: max(1, min(configuration.nodeHeartbeatMs, configuration.wakeUpWindowMs / 4)),
                leaseMs: configuration.nodeLeaseMs, node: membership.nodeId
            ))
        let layout = WorkspaceLayout(dataDirectory: data.root)
        let agents = try AgentRegistry.resolve(
            agentsFile: configuration.agentsFile, environment: configuration.agentLookupEnvironment,
            runtimeExecutable: configuration.resolvedRuntimeExecutable.path, logger: logger
        )
        // Versions are asked for in the background: a slow or hanging `--version` never delays the start.
        Task { [environment = configuration.agentLookupEnvironment] in await agents.probeVersions(environment: environment, logger: logger) }
        let resolution = try await SandboxWrapper.resolveExplained(configuration.sandbox.rawValue, dataDirectory: data.root)
        let exposed = configuration.sandboxExpose.flatMap(AgentRegistry.exposedDirectories(of:))
        let sandbox = resolution.sandbox.exposing(Array(Set(agents.binaryDirectories + exposed)).sorted())
        logger.info(
            "sandbox resolved",
            metadata: [
                "requested": "\(configuration.sandbox.rawValue)", "sandbox": "\(sandbox.kind.rawValue)",
                "userNamespace": "\(sandbox.kind == .bwrap && sandbox.userNamespace)",
            ])
        if let warning = resolution.warning {
            logger.warning("\(warning)", metadata: ["sandbox": "\(sandbox.kind.rawValue)"])
        }
        let supervisor = RuntimeSupervisor(
            layout: layout, sandbox: sandbox, runtimeExecutable: configuration.resolvedRuntimeExecutable,
            logLevel: configuration.logLevel, logger: logger
        )
        let heartbeats = HeartbeatBatcher(store: store, clock: clock, logger: logger)
        let workspaces = GitWorkspaces(layout: layout, sandbox: sandbox, logger: logger)
        let engine = SessionEngine(
            store: store, host: LocalRuntimeHost(supervisor: supervisor, workspaces: workspaces, layout: layout), timing: configuration.timing,
            clock: clock, secretBox: secretBox, agents: agents, heartbeats: heartbeats, scheduler: scheduler,
            maxRuntimes: configuration.maxRuntimes, cluster: cluster, eventCaps: configuration.eventCaps,
            maxRuntimesPerUser: configuration.maxRuntimesPerUser, userDailyBudgetUsd: configuration.userDailyBudgetUsd, metrics: metrics, logger: logger
        )
        let (ledger, gateway, lifecycle, rules, sessions) = (engine.ledger, engine.gateway, engine.lifecycle, engine.rules, engine.sessions)
        let callbacks = CallbackDispatcher(
            ledger: ledger, secretBox: secretBox, wakeUps: engine.callbackWakeUps,
            policy: CallbackRetryPolicy(maxAttempts: configuration.callbackMaxAttempts, baseDelayMs: configuration.callbackRetryBaseMs),
            logger: logger
        )
        let coordinator = NodeCoordinator(
            membership: membership, view: cluster, ledger: ledger, gateway: gateway, lifecycle: lifecycle,
            performer: engine.performer, heartbeatMs: configuration.nodeHeartbeatMs, logger: logger
        )
        await scheduler.setEvaluator { [rules] id, timer in await rules.evaluate(id, timer: timer) }
        await supervisor.setExitHandler { [engine] id, process, detail in await engine.exited(id, process: process, detail: detail) }
        return ControlPlane(
            configuration: configuration, store: store, sessions: sessions, ledger: ledger, gateway: gateway, lifecycle: lifecycle,
            performer: engine.performer, rules: rules, scheduler: scheduler, supervisor: supervisor,
            heartbeats: heartbeats, callbacks: callbacks, metrics: metrics, localToken: localToken, tickets: tickets, coordinator: coordinator,
            logger: logger
        )
    }

    /// SIGKILL to every runtime this control plane's store knows as live, with everything of its
    /// launch (runtimes outlive their control plane by design: the demo, benchmarks and tests
    /// take theirs down).
    public func killRuntimes() async {
        for session in (try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping])) ?? [] {
            guard let process = session.runtime.process else { continue }
            ProcessControl.killTree(SpawnedProcess(pid: process.pid, startTime: process.startTime))
        }
    }

    /// Whether the store answers a trivial read within `limit`: a readiness probe answers 503 at
    /// once while the database is away, rather than after the store's own bound.
    static func storeAnswers(_ store: any SessionStore, within limit: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await store.lastEventId(of: SessionID())) != nil }
            group.addTask {
                try? await Task.sleep(for: limit)
                return false
            }
            defer { group.cancelAll() }
            return await group.next() ?? false
        }
    }

    /// How many input requests wait, in sessions whose runtime is up; nil when the store does
    /// not answer within `limit`.
    static func pendingInput(_ store: any SessionStore, within limit: Duration) async -> Int? {
        await withTaskGroup(of: Int?.self) { group in
            group.addTask {
                (try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping]))?.reduce(0) { $0 + $1.inputs.pending.count }
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            return await group.next() ?? nil
        }
    }

    /// The router: open routes, then `/v1` behind bearer authentication.
    public func buildRouter() -> Router<AppRequestContext> {
        let router = Router(context: AppRequestContext.self)
        router.add(middleware: ErrorMiddleware())
        router.get("healthz") { _, _ in JSONResponse.make(["status": "ok"]) }
        router.get("readyz") { [store] _, _ in
            await Self.storeAnswers(store, within: .seconds(2))
                ? JSONResponse.make(["status": "ok"])
                : JSONResponse.make(["status": "unavailable"], status: .serviceUnavailable)
        }
        router.get("metrics") { [metrics, store] _, _ in
            // Pending input lives only in sessions whose runtime is up (at most the runtimes the
            // nodes allow): counted from the store at each scrape, so every node gives the
            // cluster's figure, right after a restart too. A store that does not answer keeps
            // the last one.
            if let pending = await Self.pendingInput(store, within: .seconds(1)) { metrics.inputPending.set(Double(pending)) }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.registry.emitToBuffer()))
            )
        }
        router.get("openapi.yaml") { _, _ in
            guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"), let data = try? Data(contentsOf: url) else {
                throw APIError.internalError
            }
            return Response(status: .ok, headers: [.contentType: "application/yaml"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
        }
        // The web console's page and static files (open: they hold no data).
        ConsoleRoutes().register(on: router)
        let authority = TokenAuthority(store: store, localToken: localToken)
        StreamEndpoint(service: sessions, authority: authority, tickets: tickets, bufferSize: configuration.streamBufferEvents)
            .register(on: router)
        let v1 = router.group("v1").add(middleware: BearerAuthentication(authority: authority))
        SessionRoutes(service: sessions).register(on: v1)
        // The agents sessions may name, as resolved at start.
        v1.get("agents") { [sessions] _, _ in
            JSONResponse.make(sessions.agents.json)
        }
        ExecutionRoutes(service: sessions).register(on: v1)
        UsageRoutes(service: sessions).register(on: v1)
        LogRoutes(service: sessions).register(on: v1)
        RuntimeEndpoint(gateway: gateway).register(on: router)
        return router
    }

    /// The HTTP application with the control plane's services: the wake-up scheduler, the
    /// runtime supervisor, the heartbeat writer and the callback dispatcher. Once it listens,
    /// runtimes that outlived the last control plane are recovered (they reconnect on their own).
    public func buildApplication(onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        let router = buildRouter()
        return Application(
            router: router,
            server: .http1WebSocketUpgrade(webSocketRouter: router),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "cloud-agent"),
            services: [scheduler, supervisor, heartbeats, callbacks, coordinator],
            onServerRunning: { [supervisor, ledger, lifecycle, performer, coordinator, configuration] channel in
                let port = channel.localAddress?.port ?? 0
                ledger.markListening()
                await supervisor.setPort(port)
                // Registered among the nodes (several on one database) before recovering, so
                // that recovery and the first decisions know which nodes are alive.
                await coordinator.listening(advertiseURL: configuration.advertiseURL ?? "http://\(configuration.host):\(port)")
                await lifecycle.recover(engine: performer)
                await onServerRunning(port)
            },
            logger: logger
        )
    }
}
