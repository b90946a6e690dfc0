//! A fake VOLTHA core for tests and local development: serves the VOLTHA northbound subset and
//! answers with its own identity (the `x-voltha-core` response header, and in device ids), so
//! a caller can tell which core served a call.
//!
//! Usage: `voltha-fake-core --id vcore-0 --store-id 0001 --listen 127.0.0.1:50556`

use std::net::SocketAddr;

use tonic::{Request, Response, Status};
use voltha_xds::proto::common::Id;
use voltha_xds::proto::schema::schema_service_server::{SchemaService, SchemaServiceServer};
use voltha_xds::proto::schema::Schemas;
use voltha_xds::proto::voltha::health_service_server::{HealthService, HealthServiceServer};
use voltha_xds::proto::voltha::voltha_global_service_server::{VolthaGlobalService, VolthaGlobalServiceServer};
use voltha_xds::proto::voltha::voltha_service_server::{VolthaService, VolthaServiceServer};
use voltha_xds::proto::voltha::{Device, Devices, HealthStatus};

#[derive(Clone)]
struct Core {
    id: String,
    store_id: String,
}

impl Core {
    fn reply<T>(&self, msg: T) -> Response<T> {
        let mut r = Response::new(msg);
        if let Ok(v) = self.id.parse() {
            r.metadata_mut().insert("x-voltha-core", v);
        }
        r
    }

    fn device(&self, id: &str) -> Device {
        Device {
            id: id.to_string(),
            r#type: "simulated_olt".into(),
            root: true,
            vendor: self.id.clone(),
            ..Default::default()
        }
    }

    fn devices(&self) -> Devices {
        Devices {
            items: vec![self.device(&format!("{}{}", self.store_id, "000000000001"))],
        }
    }

    fn create(&self, mut d: Device) -> Device {
        if d.id.is_empty() {
            d.id = format!("{}{:012x}", self.store_id, rand_suffix());
        }
        d.vendor = self.id.clone();
        d
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 & 0xffff_ffff_ffff)
        .unwrap_or(1)
}

#[tonic::async_trait]
impl HealthService for Core {
    async fn get_health_status(&self, _: Request<()>) -> Result<Response<HealthStatus>, Status> {
        Ok(self.reply(HealthStatus { state: 0 }))
    }
}

#[tonic::async_trait]
impl VolthaService for Core {
    async fn list_devices(&self, _: Request<()>) -> Result<Response<Devices>, Status> {
        Ok(self.reply(self.devices()))
    }
    async fn get_device(&self, r: Request<Id>) -> Result<Response<Device>, Status> {
        Ok(self.reply(self.device(&r.into_inner().id)))
    }
    async fn create_device(&self, r: Request<Device>) -> Result<Response<Device>, Status> {
        Ok(self.reply(self.create(r.into_inner())))
    }
}

#[tonic::async_trait]
impl VolthaGlobalService for Core {
    async fn list_devices(&self, _: Request<()>) -> Result<Response<Devices>, Status> {
        Ok(self.reply(self.devices()))
    }
    async fn get_device(&self, r: Request<Id>) -> Result<Response<Device>, Status> {
        Ok(self.reply(self.device(&r.into_inner().id)))
    }
    async fn create_device(&self, r: Request<Device>) -> Result<Response<Device>, Status> {
        Ok(self.reply(self.create(r.into_inner())))
    }
}

#[tonic::async_trait]
impl SchemaService for Core {
    async fn get_schema(&self, _: Request<()>) -> Result<Response<Schemas>, Status> {
        Ok(self.reply(Schemas::default()))
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(id), Some(listen)) = (arg(&args, "--id"), arg(&args, "--listen")) else {
        eprintln!("usage: voltha-fake-core --id NAME [--store-id 0001] --listen IP:PORT");
        return std::process::ExitCode::from(2);
    };
    let store_id = arg(&args, "--store-id").unwrap_or_else(|| "0001".into());
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("voltha-fake-core: bad --listen {listen:?}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let core = Core { id, store_id };
    eprintln!("voltha-fake-core {} listening on {addr}", core.id);
    let res = tonic::transport::Server::builder()
        .add_service(HealthServiceServer::new(core.clone()))
        .add_service(VolthaServiceServer::new(core.clone()))
        .add_service(VolthaGlobalServiceServer::new(core.clone()))
        .add_service(SchemaServiceServer::new(core))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltha-fake-core: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
