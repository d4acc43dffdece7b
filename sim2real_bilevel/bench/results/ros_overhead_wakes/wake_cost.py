import time, sys, rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from rclpy.event_handler import PublisherEventCallbacks
rclpy.init()
def bench(n_nodes, pubs, defaults=True, params=True):
    nodes=[]
    for i in range(n_nodes):
        n=rclpy.create_node(f'n{i}_{pubs}_{int(defaults)}_{int(params)}', start_parameter_services=params)
        for j in range(pubs):
            kw={} if defaults else {'event_callbacks': PublisherEventCallbacks(use_default_callbacks=False)}
            n.create_publisher(Float64, f't{j}', 10, **kw)
        nodes.append(n)
    ex=SingleThreadedExecutor()
    for n in nodes: ex.add_node(n)
    gc=nodes[0].create_guard_condition(lambda: None)
    for _ in range(50):
        gc.trigger(); ex.spin_once(timeout_sec=0.1)
    t=time.perf_counter(); N=2000
    for _ in range(N):
        gc.trigger(); ex.spin_once(timeout_sec=0.1)
    dt=(time.perf_counter()-t)/N*1e3
    ents=sum(sum(len(list(getattr(n,a))) for a in ("services","waitables","subscriptions","timers","clients")) for n in nodes)
    print(f'nodes {n_nodes} pubs/node {pubs} default_cb {defaults} params {params}: entities {ents}  {dt:.3f} ms/wake', flush=True)
    ex.shutdown()
    for n in nodes: n.destroy_node()
for args in [(1,0,True,False),(1,0,True,True),(3,0,True,True),(3,8,True,True),(3,8,False,True),(3,8,False,False)]:
    bench(*args)
