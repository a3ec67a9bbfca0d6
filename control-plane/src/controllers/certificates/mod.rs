//! kube-controller-manager's certificate controllers for CertificateSigningRequests:
//! [`signer`] (`csrsigning`: the `kubernetes.io/kube-apiserver-client`,
//! `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kubelet-serving`
//! signers, with the cluster CA) and [`approver`] (`csrapproving`: node client
//! certificates requested by bootstrappers and nodes are approved after a
//! SubjectAccessReview). [`requests`] holds what both check of a request.

pub mod approver;
pub mod requests;
pub mod signer;
